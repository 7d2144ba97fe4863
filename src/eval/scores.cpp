#include "kosmosg/eval/scores.h"

#include <algorithm>
#include <sstream>

#include "kosmosg/error.h"

namespace kosmosg::eval {
namespace {

void check_pair(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  if (a.dim() != 2 || a.sizes() != b.sizes()) {
    std::ostringstream os;
    os << "features have shapes " << a.sizes() << " and " << b.sizes()
       << ", expected two equal [N, D] batches";
    fail(what, os.str());
  }
}

}  // namespace

at::Tensor clip_score(const at::Tensor& a, const at::Tensor& b) {
  check_pair(a, b, "clip_score");
  auto na = a / a.norm(2, -1, /*keepdim=*/true);
  auto nb = b / b.norm(2, -1, /*keepdim=*/true);
  return 100.0 * (na * nb).sum(-1);
}

at::Tensor dino_score(const at::Tensor& a, const at::Tensor& b) {
  check_pair(a, b, "dino_score");
  auto denominator = (a.norm(2, -1) * b.norm(2, -1)).clamp_min(1e-8);
  return 100.0 * (a * b).sum(-1) / denominator;
}

double score_metric(const at::Tensor& scores) {
  if (scores.numel() == 0) fail("score_metric", "no scores to average, expected at least one");
  return std::max(scores.to(at::kDouble).mean().item<double>(), 0.0);
}

}  // namespace kosmosg::eval
