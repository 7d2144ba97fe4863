#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "kosmosg/error.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/kosmosg.h"
#include "support.h"

namespace fs = std::filesystem;
using namespace kosmosg;
using namespace kosmosg::models;

namespace {

std::string config_path(const std::string& name) {
  return (fs::path(__FILE__).parent_path().parent_path().parent_path() / "configs" / "kosmosg" / name).string();
}

using kosmosg::test::error_of;

int64_t numel(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

// Parameter counts by formula (reference §1.4), independent of the module code.
int64_t attention_count(int64_t c, bool inner_ln) { return 4 * (c * c + c) + (inner_ln ? 2 * c : 0); }
int64_t ffn_count(int64_t c, int64_t f) { return (f * c + f) + (c * f + c) + 2 * f; }
int64_t encoder_layer_count(int64_t c, int64_t f) { return attention_count(c, true) + ffn_count(c, f) + 4 * c; }
int64_t decoder_layer_count(int64_t c, int64_t f) {
  return encoder_layer_count(c, f) + attention_count(c, false) + 2 * c;
}

int64_t mllm_count(const MLLMConfig& m) {
  return m.vocab_size * m.embed_dim + m.layers * encoder_layer_count(m.embed_dim, m.ffn_dim) + 2 * m.embed_dim;
}

int64_t vit_count(const ViTConfig& v) {
  const int64_t w = v.width, h = v.mlp_dim();
  const int64_t block = attention_count(w, false) + 4 * w + (h * w + h) + (w * h + w);
  return w * 3 * v.patch_size * v.patch_size + w + v.tokens() * w + 4 * w + v.layers * block;
}

int64_t connector_count(const XConnectorConfig& x) {
  return x.input_dim * x.output_dim + x.output_dim + x.latent_query_num * x.output_dim +
         attention_count(x.output_dim, false);
}

int64_t aligner_m_count(const AlignerConfig& a) {
  const int64_t w = a.embed_dim;
  const int64_t encoder_proj = a.input_dim * w + w + a.max_positions * w +
                               a.encoder_layers * encoder_layer_count(w, a.encoder_ffn_dim) + 2 * w;
  const int64_t encoder = a.decoder_layers * decoder_layer_count(w, a.decoder_ffn_dim) + 2 * w;
  return encoder_proj + a.num_queries * w + encoder;
}

int64_t aligner_n_count(const AlignerConfig& a) {
  const int64_t w = a.embed_dim;
  const int64_t decoder = a.decoder_layers * decoder_layer_count(w, a.decoder_ffn_dim) + 2 * w;
  const int64_t decoder_proj = a.max_positions * w + a.encoder_layers * encoder_layer_count(w, a.encoder_ffn_dim) +
                               2 * w + w * a.input_dim + a.input_dim;
  return a.max_positions * w + decoder + decoder_proj;
}

io::Json medium_json() {
  return {
      {"mllm", {{"vocab_size", 300}, {"decoder_embed_dim", 96}, {"decoder_attention_heads", 4},
                {"decoder_ffn_embed_dim", 384}, {"decoder_layers", 3}}},
      {"vision", {{"image_size", 32}, {"patch_size", 8}, {"width", 48}, {"layers", 2}, {"head_width", 16}}},
      {"connector", {{"input_dim", 48}, {"output_dim", 96}, {"latent_query_num", 6}, {"decoder_attention_heads", 4}}},
      {"aligner", {{"input_dim", 96}, {"encoder_embed_dim", 32}, {"decoder_embed_dim", 32},
                   {"encoder_attention_heads", 4}, {"decoder_attention_heads", 4},
                   {"encoder_ffn_embed_dim", 80}, {"decoder_ffn_embed_dim", 80}, {"encoder_layers", 2},
                   {"decoder_layers", 3}, {"num_queries", 7}, {"max_positions", 40}}},
      {"image_token_length", 6}};
}

KosmosGModel tiny_model() {
  torch::manual_seed(0);
  KosmosGModel model(KosmosGConfig::from_file(config_path("tiny.json")));
  model->eval();
  return model;
}

}  // namespace

TEST(KosmosGConfig, FullSizeFileHasTheReferenceSizes) {
  auto c = KosmosGConfig::from_file(config_path("full.json"));
  EXPECT_EQ(c.mllm.vocab_size, 64007);
  EXPECT_EQ(c.mllm.embed_dim, 2048);
  EXPECT_EQ(c.mllm.heads, 32);
  EXPECT_EQ(c.mllm.layers, 24);
  EXPECT_NEAR(c.mllm.embed_scale, std::sqrt(2048.0), 1e-12);
  EXPECT_EQ(c.mllm.attention_dropout, 0.0);  // the fused attention path drops nothing
  EXPECT_EQ(c.mllm.dropout, 0.1);
  EXPECT_EQ(c.vision.tokens(), 257);
  EXPECT_EQ(c.vision.heads(), 16);
  EXPECT_EQ(c.connector.latent_query_num, 64);
  EXPECT_EQ(c.aligner.embed_dim, 768);
  EXPECT_EQ(c.aligner.num_queries, 77);
  EXPECT_EQ(c.aligner.max_positions, 32768);
  EXPECT_EQ(c.aligner.max_condition_length(), 32766);
  EXPECT_EQ(c.aligner.input_dim, 2048);
  EXPECT_EQ(c.null_token, 0);
}

TEST(KosmosGConfig, FormulasGiveTheReferenceParameterCounts) {
  auto c = KosmosGConfig::from_file(config_path("full.json"));
  EXPECT_EQ(mllm_count(c.mllm), 1340180480);
  EXPECT_EQ(vit_count(c.vision), 303179776);
  EXPECT_EQ(connector_count(c.connector), 19015680);
  EXPECT_EQ(aligner_m_count(c.aligner), 225461760);
  EXPECT_EQ(aligner_n_count(c.aligner), 250569728);
}

TEST(KosmosGConfig, ModulesMatchTheFormulasOnAMediumConfig) {
  auto c = KosmosGConfig::from_json(medium_json());
  KosmosGModel model(c);
  EXPECT_EQ(numel(*model->gpt_model), mllm_count(c.mllm));
  EXPECT_EQ(numel(*model->img_model), vit_count(c.vision));
  EXPECT_EQ(numel(*model->img_connector), connector_count(c.connector));
  EXPECT_EQ(numel(*model->aligner), aligner_m_count(c.aligner));
  Aligner full_aligner(c.aligner);
  EXPECT_EQ(numel(*full_aligner), aligner_m_count(c.aligner) + aligner_n_count(c.aligner));
}

TEST(KosmosGConfig, UpstreamAndFlatAlignerLayoutsAgree) {
  io::Json upstream = {{"EncoderDecoderConfig", {{"encoder_embed_dim", 64}, {"decoder_embed_dim", 64},
                                                 {"encoder_attention_heads", 4}, {"decoder_attention_heads", 4},
                                                 {"encoder_ffn_embed_dim", 128}, {"decoder_ffn_embed_dim", 128},
                                                 {"encoder_layers", 2}, {"decoder_layers", 3},
                                                 {"no_scale_embedding", true}}},
                       {"aligner_dim", 64}, {"decoder_embed_dim", 96}, {"encoder_query_num", 77},
                       {"table_length", 128}};
  io::Json flat = {{"encoder_embed_dim", 64}, {"decoder_embed_dim", 64}, {"encoder_attention_heads", 4},
                   {"decoder_attention_heads", 4}, {"encoder_ffn_embed_dim", 128},
                   {"decoder_ffn_embed_dim", 128}, {"encoder_layers", 2}, {"decoder_layers", 3},
                   {"input_dim", 96}, {"num_queries", 77}, {"max_positions", 128}};
  auto a = AlignerConfig::from_json(upstream), b = AlignerConfig::from_json(flat);
  EXPECT_EQ(a.input_dim, 96);
  EXPECT_EQ(a.embed_dim, b.embed_dim);
  EXPECT_EQ(a.input_dim, b.input_dim);
  EXPECT_EQ(a.decoder_layers, 3);
  EXPECT_EQ(a.decoder_layers, b.decoder_layers);
  EXPECT_EQ(a.max_positions, b.max_positions);
  EXPECT_EQ(a.num_queries, b.num_queries);
  EXPECT_EQ(a.rec_loss_scale_numerator, 77.0);
}

TEST(KosmosGConfig, BadConfigsNameTheProblem) {
  auto j = medium_json();
  j["mllm"]["decoder_attention_heads"] = 5;
  EXPECT_NE(error_of([&] { KosmosGConfig::from_json(j); }).find("5 attention heads"), std::string::npos);
  j = medium_json();
  j["connector"]["input_dim"] = 40;
  EXPECT_NE(error_of([&] { KosmosGConfig::from_json(j); }).find("connector.input_dim"), std::string::npos);
  j = medium_json();
  j["mllm"]["deepnorm"] = true;
  EXPECT_NE(error_of([&] { KosmosGConfig::from_json(j); }).find("deepnorm"), std::string::npos);
  j = medium_json();
  j["image_token_length"] = 64;
  EXPECT_NE(error_of([&] { KosmosGConfig::from_json(j); }).find("image_token_length"), std::string::npos);
  j = medium_json();
  j["vision"]["width"] = "wide";
  EXPECT_NE(error_of([&] { KosmosGConfig::from_json(j); }).find("'width'"), std::string::npos);
}

TEST(KosmosGModules, TinyModelHasTheUpstreamNames) {
  auto model = tiny_model();
  auto names = io::state_dict(*model);
  for (const char* name : {"gpt_model.decoder.embed_tokens.weight",
                           "gpt_model.decoder.layers.1.self_attn.inner_attn_ln.weight",
                           "gpt_model.decoder.layers.1.ffn.ffn_layernorm.bias", "gpt_model.decoder.layer_norm.bias",
                           "img_model.visual.class_embedding", "img_model.visual.conv1.weight",
                           "img_model.visual.transformer.resblocks.1.ts_attn.out_proj.bias",
                           "img_model.visual.transformer.resblocks.1.mlp.c_proj.weight",
                           "img_connector.latent_query", "img_connector.x_attn.k_proj.weight",
                           "aligner.encoder_query", "aligner.encoder_proj.embed_positions.weight",
                           "aligner.encoder.layers.1.encoder_attn.v_proj.bias",
                           "aligner.encoder.layers.1.encoder_attn_layer_norm.weight"})
    EXPECT_TRUE(names.count(name)) << name;
  EXPECT_FALSE(names.count("aligner.encoder.layers.0.encoder_attn.inner_attn_ln.weight"));
  // 20 per MLLM layer + 3, 16 per ViT block + 7, 11, and M: 20 / 30 per layer + 8 (608 at full size).
  EXPECT_EQ(names.size(), (20 * 2 + 3) + (16 * 2 + 7) + 11 + (20 * 2 + 30 * 2 + 8));
}

TEST(KosmosGModules, MissingKeyIsNamed) {
  auto model = tiny_model();
  auto weights = io::state_dict(*model->img_connector);
  weights.erase("x_attn.q_proj.bias");
  XConnector other(model->config().connector);
  auto message = error_of([&] { io::load_weights(*other, weights); });
  EXPECT_NE(message.find("x_attn.q_proj.bias"), std::string::npos) << message;
}

TEST(KosmosGModules, TiedEmbeddingLoadsFromEitherName) {
  auto model = tiny_model();
  auto source = io::state_dict(*model->gpt_model);
  const auto reference = source.at("decoder.embed_tokens.weight").clone();
  for (const std::string name : {"decoder.embed_tokens.weight", "decoder.output_projection.weight"}) {
    io::TensorMap weights = source;
    weights.erase("decoder.embed_tokens.weight");
    weights.emplace(name, reference);
    weights.emplace("decoder.embed_positions._float_tensor", torch::zeros({1}));
    weights.emplace("decoder.self_attn_sope.scale", torch::ones({8}));
    GPTModel other(model->gpt_model->config());
    other->load(weights);
    EXPECT_TRUE(torch::equal(other->decoder->embed_tokens->weight, reference)) << name;
  }
  io::TensorMap both = source;
  both.emplace("decoder.output_projection.weight", reference + 1);
  GPTModel other(model->gpt_model->config());
  EXPECT_NE(error_of([&] { other->load(both); }).find("tied"), std::string::npos);
}

TEST(KosmosGModules, UnusedVitAttentionIsIgnoredOnlyOnRequest) {
  auto model = tiny_model();
  auto weights = io::state_dict(*model->img_model);
  weights.emplace("visual.transformer.resblocks.0.attn.in_proj_weight", torch::zeros({96, 32}));
  ClipVisualOnly other(model->config().vision);
  other->load(weights);
  EXPECT_NE(error_of([&] { other->load(weights, {}, /*ignore_unused_attn=*/false); }).find("attn.in_proj_weight"),
            std::string::npos);
  weights.emplace("visual.proj", torch::zeros({32, 16}));
  EXPECT_NE(error_of([&] { other->load(weights); }).find("visual.proj"), std::string::npos);
}

TEST(KosmosGModules, FullStateDictLoadsAndSkipsOtherComponents) {
  auto model = tiny_model();
  io::TensorMap weights;
  for (const auto& [name, t] : io::state_dict(*model)) weights.emplace(name, t);
  weights.emplace("diffusion_unet.unet.conv_in.weight", torch::zeros({1}));
  weights.emplace("aligner.decoder_query", torch::zeros({1}));
  weights.emplace("aligner.clip_encoder.text_model.final_layer_norm.weight", torch::zeros({1}));
  weights.emplace("gpt_model.decoder.output_projection.weight", weights.at("gpt_model.decoder.embed_tokens.weight"));
  auto other = tiny_model();
  other->load(weights);
  weights.emplace("text_model.foo", torch::zeros({1}));
  EXPECT_NE(error_of([&] { other->load(weights); }).find("text_model.foo"), std::string::npos);
}

TEST(KosmosGModules, EncodeConditionOrdersUnconditionalThenTiledRows) {
  auto model = tiny_model();
  const auto& c = model->config();
  torch::NoGradGuard no_grad;
  const int64_t q = c.connector.latent_query_num;
  // Row 0: <s> <image> slots </image> text; row 1: <s> text, right-padded.
  std::vector<int64_t> row0 = {0, 123};
  for (int64_t i = 0; i < q; ++i) row0.push_back(123);
  for (int64_t t : {124, 10, 11}) row0.push_back(t);
  std::vector<int64_t> row1(row0.size(), 1);
  row1[0] = 0, row1[1] = 20, row1[2] = 21;
  auto tokens = torch::stack({torch::tensor(row0), torch::tensor(row1)});
  auto mask = torch::zeros_like(tokens, torch::kUInt8);
  mask.index_put_({0, torch::indexing::Slice(2, 2 + q)}, 1);
  auto pixels = torch::randn({1, 3, c.vision.image_size, c.vision.image_size});
  auto out = model->encode_condition(tokens, pixels, mask, torch::tensor({{0}}), 3);
  ASSERT_EQ(out.sizes(), (at::IntArrayRef{12, c.aligner.num_queries, c.aligner.embed_dim}));
  for (int i = 1; i < 6; ++i) EXPECT_TRUE(torch::equal(out[i], out[0]));
  for (int i = 6; i < 10; ++i) EXPECT_TRUE(torch::allclose(out[i], out[i + 2]));
  EXPECT_FALSE(torch::allclose(out[6], out[7]));
  EXPECT_FALSE(torch::allclose(out[0], out[6]));

  auto negative = model->encode_condition(tokens, pixels, mask, torch::tensor({{0, 30, 31}}), 1);
  EXPECT_FALSE(torch::allclose(negative[0], out[0]));
  EXPECT_TRUE(torch::allclose(negative[2], out[6]));

  auto short_mask = mask.clone();
  short_mask.index_put_({0, 2}, 0);
  EXPECT_NE(error_of([&] { model->encode_condition(tokens, pixels, short_mask, {}, 1); }).find("image slots"),
            std::string::npos);
}

TEST(KosmosGModules, TrainModeAppliesDropoutAndGradientsFlow) {
  auto model = tiny_model();
  auto tokens = torch::tensor({{0, 10, 11, 12, 13}});
  auto eval_a = model->gpt_model(tokens).hidden;
  auto eval_b = model->gpt_model(tokens).hidden;
  EXPECT_TRUE(torch::equal(eval_a, eval_b));
  model->train();
  auto train_a = model->gpt_model(tokens).hidden;
  auto train_b = model->gpt_model(tokens).hidden;
  EXPECT_FALSE(torch::allclose(train_a, train_b));

  auto condition = model->condition(tokens);
  condition.pow(2).mean().backward();
  EXPECT_TRUE(model->aligner->encoder_query.grad().defined());
  EXPECT_GT(model->gpt_model->decoder->embed_tokens->weight.grad().abs().sum().item<double>(), 0.0);
}
