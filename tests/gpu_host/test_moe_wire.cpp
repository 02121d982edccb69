// The exchange's messages (kernels/common/moe_wire.h) through the host backend's loops over the
// bodies the CUDA kernels run: every row packed into its slot or its spill and read back where
// the experts read it, in fp32 (bit for bit), bf16 (rounded to nearest even) and fp8 (within
// e4m3's rounding of its block scale); headers and route entries intact; the message sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "kernels/backend.h"
#include "tests/common/wire_case.h"

namespace moe {
namespace {

using kernels::kE4m3Max;
using kernels::kFp8Block;
using kernels::WireDtype;
namespace wire = kernels::wire;

// The largest error e4m3 with a block scale s may make on x: half a unit in the last of its 3
// mantissa bits, or half the subnormal step 2^-9 s.
float fp8_bound(float x, float scale) {
  return std::max(std::fabs(x) / 16.0f, scale / 1024.0f) * 1.0001f;
}

void expect_loopback(const test::WireCase& c) {
  auto be = kernels::make_backend("cpu", 0);
  const std::vector<unsigned char> packed = test::pack_on(*be, c);
  const int N = c.num_ranks, k = c.top_k;
  const int64_t H = c.width;
  // Headers head every slot.
  for (int d = 0; d < N; ++d) {
    std::vector<int32_t> h(c.f.header_ints);
    std::memcpy(h.data(), packed.data() + d * c.f.slot_bytes, h.size() * sizeof(int32_t));
    EXPECT_EQ(h, std::vector<int32_t>(c.header.begin() + d * c.f.header_ints,
                                      c.header.begin() + (d + 1) * c.f.header_ints))
        << "slot " << d;
  }
  const test::Received got = test::receive_on(*be, c, packed);
  int32_t r = 0;
  for (int s = 0; s < N; ++s) {
    for (int32_t j = 0; j < c.send_offsets[s + 1] - c.send_offsets[s]; ++j, ++r) {
      SCOPED_TRACE(testing::Message() << "source " << s << " row " << j);
      const int32_t i = c.send_offsets[s] + j;  // the send row it came from
      for (int e = 0; e < k; ++e) {
        const kernels::RouteEntry& a = got.routes[r * k + e];
        const kernels::RouteEntry& b = c.send_routes[i * k + e];
        ASSERT_TRUE(a.local_slot == b.local_slot && a.weight == b.weight) << "entry " << e;
      }
      const float* want = c.hidden.data() + c.send_token[i] * H;
      const float* row = got.rows.data() + r * H;
      // Own rows stay fp32 but in bf16 dispatch, which hands every row over as a bf16 value.
      const bool exact =
          c.f.dtype == WireDtype::kF32 || (s == c.rank && c.f.dtype != WireDtype::kBF16);
      float amax = 0;
      for (int64_t col = 0; col < H; ++col) {
        if (col % kFp8Block == 0) {
          amax = 0;
          for (int64_t q = col; q < std::min(H, col + kFp8Block); ++q) {
            amax = std::max(amax, std::fabs(want[q]));
          }
        }
        if (exact) {
          ASSERT_EQ(row[col], want[col]) << "column " << col;
        } else if (c.f.dtype == WireDtype::kBF16) {
          ASSERT_EQ(row[col], round_to_bf16(want[col])) << "column " << col;
        } else {
          ASSERT_LE(std::fabs(row[col] - want[col]), fp8_bound(want[col], amax / kE4m3Max))
              << "column " << col;
        }
      }
    }
  }
  // Where rows lie: distinct places; fp32 rows in the arena (slots, spills, own rows last).
  std::vector<int32_t> at(got.row_at);
  std::sort(at.begin(), at.end());
  EXPECT_TRUE(std::adjacent_find(at.begin(), at.end()) == at.end());
}

TEST(MoeWire, MessageSizesFollowTheFormat) {
  const wire::MessageFormat f = wire::message_format(WireDtype::kBF16, 1024, 8, 11, 4);
  EXPECT_EQ(f.row_bytes, 2048);
  EXPECT_EQ(f.header_bytes, 64);                        // 44 bytes of header, padded
  EXPECT_EQ(f.slot_bytes, 5 * 2048);                    // 64 + 4 x (2048 + 64) = 8512 -> 10240
  EXPECT_EQ(wire::message_bytes(f, 3), 64 + 3 * 2112);  // what MPI sends of a 3-row slot
  EXPECT_EQ(wire::spill_rows(f, 4), 0);
  EXPECT_EQ(wire::spill_rows(f, 6), 3);  // 2 x 2112 bytes in whole rows of 2048
  EXPECT_EQ(wire::row_bytes(WireDtype::kF32, 100), 400);
  EXPECT_EQ(wire::row_bytes(WireDtype::kFP8, 1000), 1000 + 4 * 8);  // codes, then 8 scales
  EXPECT_EQ(wire::row_bytes(WireDtype::kFP8, 130), 132 + 4 * 2);
  // The experts read fp32 rows and whole bf16 rows where they land; the rest is widened.
  EXPECT_TRUE(wire::rows_in_place(wire::message_format(WireDtype::kF32, 37, 2, 11, 4)));
  EXPECT_TRUE(wire::rows_in_place(f));
  EXPECT_FALSE(wire::rows_in_place(wire::message_format(WireDtype::kBF16, 37, 2, 11, 4)));
  EXPECT_FALSE(wire::rows_in_place(wire::message_format(WireDtype::kFP8, 1024, 8, 11, 4)));
}

TEST(MoeWire, RowsAndRoutesSurviveTheRoundTripInEveryWireType) {
  struct Shape {
    std::vector<int32_t> rows;
    int rank;
    int64_t width;
    int k;
    int32_t capacity;
  };
  const Shape shapes[] = {
      {{3, 2, 4}, 1, 200, 3, 2},    // spills to ranks 0 and 2; fp8's last block partial
      {{0, 5, 1, 0}, 2, 37, 2, 8},  // no spill, empty peers, odd width
      {{6}, 0, 64, 4, 1},           // one rank: only own rows
      {{9, 9}, 0, 128, 1, 3},       // spill larger than the slot
  };
  for (const Shape& s : shapes) {
    for (WireDtype t : {WireDtype::kF32, WireDtype::kBF16, WireDtype::kFP8}) {
      test::WireCase c = test::make_wire_case(17, s.rank, s.rows, s.width, s.k, s.capacity, t);
      // Own rows packed into their slot too, where the rows are read in place and fit.
      const bool can_own_in_slot =
          wire::rows_in_place(c.f) && s.rows[static_cast<size_t>(s.rank)] <= s.capacity;
      for (bool own_in_slot : {false, true}) {
        if (own_in_slot && !can_own_in_slot) continue;
        // With the rows' bf16 copy (bf16 compute): bf16 rows copied from it, the same bits.
        for (bool bf16_copy : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << wire_dtype_name(t) << ", " << s.rows.size() << " ranks, width " << s.width
                       << (own_in_slot ? ", own rows in their slot" : "")
                       << (bf16_copy ? ", bf16 copy" : ""));
          c.own_in_slot = own_in_slot;
          c.bf16_copy = bf16_copy;
          expect_loopback(c);
        }
      }
    }
  }
}

TEST(MoeWire, Fp8BlocksOfZerosAndHugeValuesStayFinite) {
  float row_in[2 * kFp8Block] = {};
  row_in[kFp8Block] = 1e30f;  // saturates nothing: the scale absorbs it
  row_in[kFp8Block + 1] = -3.0f;
  std::vector<unsigned char> row(
      static_cast<size_t>(wire::row_bytes(WireDtype::kFP8, 2 * kFp8Block)));
  for (int64_t b = 0; b < 2; ++b) wire::encode_fp8_block(row_in, row.data(), 2 * kFp8Block, b);
  EXPECT_EQ(wire::decode(WireDtype::kFP8, row.data(), 2 * kFp8Block, 0), 0.0f);
  EXPECT_FLOAT_EQ(wire::decode(WireDtype::kFP8, row.data(), 2 * kFp8Block, kFp8Block), 1e30f);
  EXPECT_EQ(wire::decode(WireDtype::kFP8, row.data(), 2 * kFp8Block, kFp8Block + 1), 0.0f);
}

}  // namespace
}  // namespace moe
