// Dispatcher over a shared arena (dispatcher.h; Communicator::make_shared_arena): the segment
// layout and the combine through the arena.
//
// Over a shared arena (all ranks on one node, host memory) the pack is the transfer: each rank
// packs its message to rank d into slot d of its own segment and publishes (counter kDispatch);
// each receiver waits for every sender's publication and reads its slot where it lies. Combine
// likewise: a rank writes the partial rows for every source into its own combine area and
// publishes (kCombine); each source reads its rows in the peers' areas. Reusing the segments needs
// no other synchronisation, because every rank runs dispatch, combine, dispatch, ... in order:
// - rank s rewrites its dispatch slots (dispatch l+1) only after its combine of layer l returned,
//   i.e. after every peer d published combine l, which d does after its experts of layer l read
//   s's rows and after d copied the routes and headers out of them: nobody reads them any more;
// - rank d rewrites its combine area (combine l+1) only after it received dispatch l+1 from every
//   source s, which s publishes after its combine of layer l returned, i.e. after s read d's
//   combine area of layer l.
// A layer whose dispatch spilled (some message over the capacity) moves the spill, and then its
// combine, as messages through the communicator; the slots still go through the arena.
#include <algorithm>
#include <numeric>

#include "kernels/common/check.h"
#include "parallel/dispatcher.h"

namespace moe::parallel {

namespace wire = kernels::wire;
namespace layout = kernels::layout;

int64_t Dispatcher::arena_combine_at() const {
  return static_cast<int64_t>(comm_.size()) * dispatch_format().slot_bytes;
}

int64_t Dispatcher::arena_segment_bytes() const {
  const int64_t N = comm_.size();
  const int64_t rows = (N - 1) * capacity_;  // partial rows: at most C from each other rank
  const int64_t bytes = arena_combine_at() + wire::round_up(N * 8, wire::kHeaderAlignBytes) +
                        rows * wire::row_bytes(wire_.combine, hidden_);
  // Segments one after the other keep every dispatch row at a whole row from segment 0.
  return wire::round_up(bytes, std::lcm(dispatch_format().row_bytes, wire::kHeaderAlignBytes));
}

void Dispatcher::ensure_arena() {
  if (!arena_wanted_) return;
  const int64_t bytes = arena_segment_bytes();
  if (arena_ != nullptr && arena_->segment_bytes() == bytes) return;
  arena_ = comm_.make_shared_arena(bytes);
  arena_wanted_ = arena_ != nullptr;
}

void Dispatcher::start_combine_in_arena(const DispatchHandle& d) {
  const int N = comm_.size(), rank = comm_.rank();
  unsigned char* area = arena_->segment(rank) + arena_combine_at();
  // Where each source's partial rows start (in rows), for the sources reading them.
  int64_t* table = reinterpret_cast<int64_t*>(area);
  int64_t q = 0;
  for (int s = 0; s < N; ++s) {
    table[s] = q;
    if (s != rank) q += d.recv_counts[s];
  }
  write_partial_rows(d, area + wire::round_up(N * 8, wire::kHeaderAlignBytes));
  arena_->publish(kCombineCounter, ++combine_seq_);
  ++collectives_[static_cast<size_t>(d.layer)];
}

const int64_t* Dispatcher::returned_offsets(const DispatchHandle& d) {
  const int N = comm_.size(), rank = comm_.rank();
  const int64_t row_bytes = wire::row_bytes(wire_.combine, hidden_);
  const int64_t rows_at = arena_combine_at() + wire::round_up(N * 8, wire::kHeaderAlignBytes);
  host_returned_at_.clear();
  for (int p = 0; p < N; ++p) {
    if (p == rank) continue;
    const unsigned char* area = arena_->segment(p) + arena_combine_at();
    const int64_t first = reinterpret_cast<const int64_t*>(area)[rank];
    const int64_t from = p * arena_->segment_bytes() + rows_at + first * row_bytes;
    for (int64_t j = 0; j < d.send_counts[p]; ++j)
      host_returned_at_.push_back(from + j * row_bytes);
  }
  returned_at_.ensure(backend_, std::max<size_t>(host_returned_at_.size(), 1));
  backend_.upload(returned_at_.data(), host_returned_at_.data(),
                  host_returned_at_.size() * sizeof(int64_t));
  return returned_at_.data();
}

}  // namespace moe::parallel
