#pragma once
// DreamBench scores as Kosmos-G's eval scripts compute them (CLIP-T, CLIP-I, DINO).
#include <ATen/core/Tensor.h>

namespace kosmosg::eval {

// Per-row CLIP score 100·⟨a/‖a‖, b/‖b‖⟩ of two [N, D] feature batches (no eps, like
// clip_score.py): CLIP-T pairs image and text features, CLIP-I generated and reference images.
at::Tensor clip_score(const at::Tensor& a, const at::Tensor& b);

// Per-row DINO score 100·cos(a, b) of two [N, D] CLS batches, with torch's
// cosine_similarity denominator max(‖a‖·‖b‖, 1e-8).
at::Tensor dino_score(const at::Tensor& a, const at::Tensor& b);

// The reported metric of a batch of per-pair scores: max(mean, 0), in float64.
double score_metric(const at::Tensor& scores);

}  // namespace kosmosg::eval
