#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "kosmosg/error.h"
#include "kosmosg/io/safetensors.h"
#include "support.h"

namespace fs = std::filesystem;
using kosmosg::io::SafeTensors;

namespace {

using kosmosg::test::temp_file;

void write_raw(const fs::path& p, const std::string& header, const std::string& data) {
  std::ofstream out(p, std::ios::binary);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>(n >> (8 * i)));
  out << header << data;
}

std::string open_error(const fs::path& p) {
  try {
    SafeTensors::open(p.string());
  } catch (const kosmosg::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(SafeTensors, RoundTripsEveryDtype) {
  kosmosg::io::TensorMap in;
  in["f32"] = torch::randn({3, 4});
  in["f16"] = torch::randn({5}).to(torch::kHalf);
  in["bf16"] = torch::randn({2, 2}).to(torch::kBFloat16);
  in["f64"] = torch::randn({2}, torch::kDouble);
  in["i64"] = torch::arange(7, torch::kLong);
  in["i32"] = torch::arange(3, torch::kInt);
  in["u8"] = torch::arange(9, torch::kByte).view({3, 3});
  in["bool"] = torch::tensor({true, false, true});
  in["scalar"] = torch::tensor(2.5f);
  in["empty"] = torch::empty({0, 4});
  in["strided"] = torch::randn({4, 6}).t();
  auto p = temp_file("st", "roundtrip.safetensors");
  kosmosg::io::save_safetensors(p.string(), in, {{"module", "Test"}});
  auto f = SafeTensors::open(p.string());
  EXPECT_EQ(f.metadata().at("module"), "Test");
  EXPECT_EQ(f.keys().size(), in.size());
  for (const auto& [name, t] : in) {
    auto got = f.get(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(got, t)) << name;
  }
  auto prefixed = f.tensors("f");
  EXPECT_EQ(prefixed.size(), 3u);  // f32, f16, f64
  EXPECT_TRUE(prefixed.count("32"));
}

TEST(SafeTensors, TensorsOutliveTheHandleAndAreWritable) {
  auto p = temp_file("st", "alive.safetensors");
  kosmosg::io::save_safetensors(p.string(), {{"x", torch::ones({4})}});
  at::Tensor x;
  {
    auto f = SafeTensors::open(p.string());
    x = f.get("x");
  }
  x.add_(1);  // copy-on-write mapping: the file stays unchanged
  EXPECT_TRUE(torch::equal(x, torch::full({4}, 2.0f)));
  EXPECT_TRUE(torch::equal(SafeTensors::open(p.string()).get("x"), torch::ones({4})));
}

TEST(SafeTensors, RejectsBrokenFiles) {
  auto p = temp_file("st", "broken.safetensors");
  { std::ofstream(p, std::ios::binary) << "abc"; }
  EXPECT_NE(open_error(p).find("too short"), std::string::npos);

  write_raw(p, std::string("{\"a\":1}"), "");
  EXPECT_NE(open_error(p).find("tensor 'a'"), std::string::npos);

  {
    std::ofstream out(p, std::ios::binary);
    uint64_t n = 1000;
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>(n >> (8 * i)));
    out << "{}";
  }
  EXPECT_NE(open_error(p).find("JSON header is 1000 bytes long"), std::string::npos);

  write_raw(p, "{not json", "");
  EXPECT_NE(open_error(p).find("not valid JSON"), std::string::npos);

  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234");
  EXPECT_NE(open_error(p).find("outside the data section"), std::string::npos);

  write_raw(p, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678");
  EXPECT_NE(open_error(p).find("needs 12"), std::string::npos);

  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
            "12345678");
  EXPECT_NE(open_error(p).find("overlap"), std::string::npos);

  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
            "12345678");
  EXPECT_NE(open_error(p).find("appears twice"), std::string::npos);

  write_raw(p, R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", "1");
  EXPECT_NE(open_error(p).find("unsupported dtype"), std::string::npos);

  write_raw(p, R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "1234");
  EXPECT_NE(open_error(p).find("non-negative"), std::string::npos);

  EXPECT_NE(open_error(temp_file("st", "missing.safetensors")).find("cannot open"), std::string::npos);
  EXPECT_NE(open_error(p).find(p.string()), std::string::npos);
}

TEST(SafeTensors, FailedWriteLeavesExistingFileUntouched) {
  auto p = temp_file("st", "keep.safetensors");
  kosmosg::io::save_safetensors(p.string(), {{"x", torch::ones({2})}});
  EXPECT_THROW(kosmosg::io::write_file_atomically(
                   p.string(), [](std::FILE*) { kosmosg::fail("test", "writer failed"); }),
               kosmosg::Error);
  EXPECT_TRUE(torch::equal(SafeTensors::open(p.string()).get("x"), torch::ones({2})));
  for (const auto& e : fs::directory_iterator(p.parent_path()))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
}
