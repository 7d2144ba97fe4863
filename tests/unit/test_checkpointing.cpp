// Gradient checkpointing: nn::checkpoint itself, then each model's switch, which must leave the
// loss and every gradient as they are without it.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <map>
#include <set>

#include "kosmosg/models/kosmosg.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/nn/checkpoint.h"

namespace fs = std::filesystem;
using namespace kosmosg;
using namespace kosmosg::models;

namespace {

KosmosGConfig tiny_config() {
  const auto root = fs::path(__FILE__).parent_path().parent_path().parent_path();
  return KosmosGConfig::from_file((root / "configs" / "kosmosg" / "tiny.json").string());
}

UNet2DConditionConfig tiny_unet_config() {
  return UNet2DConditionConfig::from_json(io::Json::parse(R"({
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
    "attention_head_dim": 2, "cross_attention_dim": 12,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]})"));
}

// The loss of one step and the gradients it left: every parameter's (undefined where none)
// and those of the extra leaves the step reads.
struct Outcome {
  at::Tensor loss;
  std::map<std::string, at::Tensor> grads;
  bool checkpointed = false;  // the loss's graph holds a checkpointed block
};

bool is_checkpoint_node(const torch::autograd::Node* node) {
  return node && node->name().find("CheckpointFunction") != std::string::npos;
}

bool graph_has_checkpoint(const at::Tensor& t) {
  std::vector<torch::autograd::Node*> stack{t.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  while (!stack.empty()) {
    auto* node = stack.back();
    stack.pop_back();
    if (!node || !seen.insert(node).second) continue;
    if (is_checkpoint_node(node)) return true;
    for (const auto& edge : node->next_edges()) stack.push_back(edge.function.get());
  }
  return false;
}

Outcome run(torch::nn::Module& model, const std::function<at::Tensor()>& step,
            const std::vector<at::Tensor>& leaves = {}) {
  model.zero_grad(/*set_to_none=*/true);
  for (auto leaf : leaves) leaf.mutable_grad().reset();
  torch::manual_seed(7);
  auto loss = step();
  const bool checkpointed = graph_has_checkpoint(loss);
  loss.backward();
  Outcome out{loss.detach(), {}, checkpointed};
  for (const auto& p : model.named_parameters())
    out.grads[p.key()] = p.value().grad().defined() ? p.value().grad().clone() : at::Tensor();
  for (size_t i = 0; i < leaves.size(); ++i) out.grads["leaf" + std::to_string(i)] = leaves[i].grad().clone();
  return out;
}

// Equal losses and gradients to float32 rounding, measured against the largest gradient of the
// step: the forward runs without grad, where some kernels (attention) take other paths, and
// gradients that vanish exactly (key biases) hold only rounding noise on both sides.
void expect_same(const Outcome& a, const Outcome& b) {
  EXPECT_TRUE(torch::allclose(a.loss, b.loss, 1e-6, 0)) << a.loss.item<double>() << " vs " << b.loss.item<double>();
  ASSERT_EQ(a.grads.size(), b.grads.size());
  double scale = 0;
  for (const auto& [name, g] : b.grads)
    if (g.defined()) scale = std::max(scale, g.abs().max().item<double>());
  ASSERT_GT(scale, 0.0);
  for (const auto& [name, g] : a.grads) {
    const auto& h = b.grads.at(name);
    ASSERT_EQ(g.defined(), h.defined()) << name;
    if (g.defined()) EXPECT_LE((g - h).abs().max().item<double>(), 1e-6 * scale) << name;
  }
}

size_t count_with_grad(const Outcome& o, const std::string& prefix) {
  size_t n = 0;
  for (const auto& [name, g] : o.grads) n += name.rfind(prefix, 0) == 0 && g.defined();
  return n;
}

void freeze(torch::nn::Module& m, bool frozen = true) {
  for (auto& p : m.parameters()) p.set_requires_grad(!frozen);
}

bool is_checkpoint_node(const at::Tensor& t) { return is_checkpoint_node(t.grad_fn().get()); }

// A small block with dropout, and its parameters.
struct DropoutBlock {
  torch::nn::Linear a{4, 8}, b{8, 3};
  int calls = 0;
  at::Tensor operator()(const at::Tensor& x) {
    ++calls;
    return b(at::dropout(at::gelu(a(x)), 0.5, /*train=*/true));
  }
  std::vector<at::Tensor> params() const {
    auto p = a->parameters();
    for (const auto& q : b->parameters()) p.push_back(q);
    return p;
  }
};

}  // namespace

TEST(Checkpointing, RecomputesWithTheSameDropoutMaskAndGivesTheSameGradients) {
  torch::manual_seed(0);
  DropoutBlock block;
  auto x = torch::randn({5, 4}).requires_grad_(true);
  torch::nn::Sequential holder(block.a, block.b);
  auto plain = run(*holder, [&] { return block(x).pow(2).sum(); }, {x});
  EXPECT_EQ(block.calls, 1);
  const double after_plain = torch::rand({1}).item<double>();
  auto checkpointed = run(*holder, [&] {
    auto y = nn::checkpoint([&](const at::Tensor& h) { return block(h); }, x, block.params());
    EXPECT_TRUE(is_checkpoint_node(y));
    return y.pow(2).sum();
  }, {x});
  EXPECT_EQ(block.calls, 3);  // the forward and its recomputation
  expect_same(plain, checkpointed);
  // The recomputation replays the forward's random numbers without consuming the stream.
  EXPECT_EQ(torch::rand({1}).item<double>(), after_plain);
}

TEST(Checkpointing, ParametersGetGradientsWhenNoInputRequiresGradUnlessReentrantCompat) {
  torch::manual_seed(0);
  DropoutBlock block;
  torch::nn::Sequential holder(block.a, block.b);
  const auto x = torch::randn({5, 4});
  auto fn = [&](const at::Tensor& h) { return block(h); };
  auto plain = run(*holder, [&] { return fn(x).sum(); });
  auto checkpointed = run(*holder, [&] { return nn::checkpoint(fn, x, block.params()).sum(); });
  expect_same(plain, checkpointed);

  auto y = nn::checkpoint(fn, x, block.params(), /*reentrant_compat=*/true);
  EXPECT_FALSE(y.requires_grad());
  // With an input that requires grad, the compatible form differentiates everything.
  auto xg = x.clone().requires_grad_(true);
  auto compat = run(*holder, [&] { return nn::checkpoint(fn, xg, block.params(), true).sum(); }, {xg});
  auto reference = run(*holder, [&] { return fn(xg).sum(); }, {xg});
  expect_same(reference, compat);
}

TEST(Checkpointing, SeveralInputsUndefinedOnesAndAliasedOutputs) {
  torch::manual_seed(0);
  torch::nn::Linear proj(4, 4);
  auto x = torch::randn({3, 4}).requires_grad_(true);
  auto memory = torch::randn({3, 4}).requires_grad_(true);
  const auto mask = torch::tensor({true, false, true}).unsqueeze(1);
  // Returns the memory unchanged besides the result: an output aliasing an input.
  nn::CheckpointFn fn = [&](const std::vector<at::Tensor>& in) {
    EXPECT_FALSE(in[2].defined());
    EXPECT_FALSE(in[1].requires_grad());
    return std::vector<at::Tensor>{proj(in[0] + in[3]).masked_fill(in[1], 0.0), in[3]};
  };
  auto loss = [&](const std::vector<at::Tensor>& out) { return out[0].pow(2).sum() + (out[1] * 3).sum(); };
  auto plain = run(*proj, [&] { return loss(fn({x, mask, {}, memory})); }, {x, memory});
  auto checkpointed = run(*proj, [&] {
    return loss(nn::checkpoint(fn, {x, mask, {}, memory}, proj->parameters()));
  }, {x, memory});
  expect_same(plain, checkpointed);
}

TEST(CheckpointingModels, MLLMWithDropoutMatchesWithoutCheckpointing) {
  auto config = tiny_config();
  ASSERT_GT(config.mllm.dropout, 0.0);
  torch::manual_seed(0);
  GPTModel gpt(config.mllm);
  gpt->train();
  const auto tokens = torch::randint(4, 120, {2, 7});
  auto step = [&] {
    auto out = gpt(tokens);
    return out.hidden.pow(2).mean() + out.logits.logsumexp(-1).mean();
  };
  auto plain = run(*gpt, step);
  gpt->set_gradient_checkpointing(true);
  auto checkpointed = run(*gpt, step);
  EXPECT_FALSE(plain.checkpointed);
  EXPECT_TRUE(checkpointed.checkpointed);
  expect_same(plain, checkpointed);
  EXPECT_GT(count_with_grad(checkpointed, "decoder.layers.1."), 0u);
}

TEST(CheckpointingModels, ViTLastBlockTrainsUnderDefaultButNotReentrantCompat) {
  torch::manual_seed(0);
  ClipVisualOnly vit(tiny_config().vision);
  vit->train();
  const auto pixels = torch::randn({2, 3, 28, 28});
  const auto weights = torch::randn({2, 5, 32});
  auto step = [&] { return (vit(pixels) * weights).sum(); };
  auto plain = run(*vit, step);
  vit->set_gradient_checkpointing(true);
  auto checkpointed = run(*vit, step);
  EXPECT_TRUE(checkpointed.checkpointed);
  expect_same(plain, checkpointed);

  // The instruction-tuning setting: only the last block and ln_post train, so the last block's
  // input does not require grad.
  freeze(*vit);
  freeze(*vit->visual->transformer->resblocks[1], false);
  freeze(*vit->visual->ln_post, false);
  vit->set_gradient_checkpointing(false);
  auto frozen_plain = run(*vit, step);
  vit->set_gradient_checkpointing(true);
  auto frozen_checkpointed = run(*vit, step);
  EXPECT_TRUE(frozen_checkpointed.checkpointed);
  expect_same(frozen_plain, frozen_checkpointed);
  EXPECT_GT(count_with_grad(frozen_checkpointed, "visual.transformer.resblocks.1."), 0u);

  vit->set_gradient_checkpointing(true, /*reentrant_compat=*/true);
  auto compat = run(*vit, step);
  EXPECT_EQ(count_with_grad(compat, "visual.transformer.resblocks."), 0u);
  EXPECT_TRUE(compat.grads.at("visual.ln_post.weight").defined());
  EXPECT_TRUE(torch::allclose(compat.loss, frozen_plain.loss, 1e-6, 0));
}

TEST(CheckpointingModels, AlignerWithDropoutMatchesIncludingTheConditionGradient) {
  auto config = tiny_config().aligner;
  config.dropout = 0.1;
  config.activation_dropout = 0.1;
  torch::manual_seed(0);
  Aligner aligner(config);
  aligner->train();
  auto condition = torch::randn({2, 5, config.input_dim}).requires_grad_(true);
  const auto pads = torch::tensor({{0, 0, 0, 0, 0}, {0, 0, 0, 1, 1}});
  const auto teacher = torch::randn({2, config.num_queries, config.embed_dim});
  auto step = [&] {
    auto out = aligner(condition, pads, teacher);
    return out.mse_loss + out.rec_loss;
  };
  auto plain = run(*aligner, step, {condition});
  aligner->set_gradient_checkpointing(true);
  auto checkpointed = run(*aligner, step, {condition});
  EXPECT_TRUE(checkpointed.checkpointed);
  expect_same(plain, checkpointed);
  EXPECT_GT(count_with_grad(checkpointed, "decoder_proj.layers.1."), 0u);
}

TEST(CheckpointingModels, UNetMatchesAndReentrantCompatStopsAtFrozenInputs) {
  torch::manual_seed(0);
  UNet2DConditionModel unet(tiny_unet_config());
  unet->train();
  const auto sample = torch::randn({2, 4, 8, 8});
  const auto timesteps = torch::tensor({10, 500});
  const auto target = torch::randn({2, 4, 8, 8});
  auto context = torch::randn({2, 5, 12}).requires_grad_(true);
  auto step = [&] { return (unet(sample, timesteps, context) - target).pow(2).mean(); };
  auto plain = run(*unet, step, {context});
  unet->set_gradient_checkpointing(true);
  auto checkpointed = run(*unet, step, {context});
  EXPECT_TRUE(checkpointed.checkpointed);
  expect_same(plain, checkpointed);

  // Frozen entry layers and a condition without grad: no block input requires grad.
  freeze(*unet->conv_in);
  freeze(*unet->time_embedding);
  const auto fixed = context.detach();
  auto frozen_step = [&] { return (unet(sample, timesteps, fixed) - target).pow(2).mean(); };
  unet->set_gradient_checkpointing(false);
  auto frozen_plain = run(*unet, frozen_step);
  unet->set_gradient_checkpointing(true);
  auto frozen_checkpointed = run(*unet, frozen_step);
  EXPECT_TRUE(frozen_checkpointed.checkpointed);
  expect_same(frozen_plain, frozen_checkpointed);
  EXPECT_GT(count_with_grad(frozen_checkpointed, "down_blocks.0."), 0u);

  unet->set_gradient_checkpointing(true, /*reentrant_compat=*/true);
  auto compat = run(*unet, frozen_step);
  for (const char* prefix : {"down_blocks.", "mid_block.", "up_blocks."})
    EXPECT_EQ(count_with_grad(compat, prefix), 0u) << prefix;
  EXPECT_TRUE(compat.grads.at("conv_out.weight").defined());
}

TEST(CheckpointingModels, EvalModeIsUnaffected) {
  auto config = tiny_config();
  torch::manual_seed(0);
  KosmosGModel model(config);
  model->eval();
  const auto tokens = torch::tensor({{0, 10, 11, 12, 13, 1}});
  auto step = [&] { return model->condition(tokens).pow(2).mean(); };
  auto plain = run(*model, step);
  model->set_gradient_checkpointing(true);
  auto checkpointed = run(*model, step);
  EXPECT_FALSE(checkpointed.checkpointed);
  EXPECT_TRUE(torch::equal(plain.loss, checkpointed.loss));
  expect_same(plain, checkpointed);

  // A switched-on model in eval mode calls its blocks directly.
  torch::nn::Linear block(3, 3);
  block->eval();
  nn::GradientCheckpointing on{true, false};
  EXPECT_FALSE(is_checkpoint_node(on.run(*block, *block, [&](const at::Tensor& x) { return block(x); }, torch::randn({2, 3}))));
  block->train();
  EXPECT_TRUE(is_checkpoint_node(on.run(*block, *block, [&](const at::Tensor& x) { return block(x); }, torch::randn({2, 3}))));
}
