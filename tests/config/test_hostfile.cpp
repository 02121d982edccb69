// Hostfiles: the shipped example and a commented file read exactly; every malformed line, a host
// listed twice, unequal slots and rank counts that do not fill whole nodes give one error naming
// the file and line (or the rank count).
#include <string>
#include <vector>

#include "runtime/io/hostfile.h"
#include "tests/config/config_test_util.h"

namespace moe::runtime {
namespace {

using moe::testing::config_error;

TEST(Hostfile, TheShippedExampleReadsAsTwoNodesOfEight) {
  const Hostfile h = load_hostfile(std::string(MOE_SOURCE_DIR) + "/launch/hostfile.example");
  ASSERT_EQ(h.hosts.size(), 2u);
  EXPECT_EQ(h.hosts[1].host, "gpu-node-1");
  EXPECT_EQ(h.slots_per_node(), 8);
  EXPECT_EQ(h.total_slots(), 16);
  h.check_ranks(16, "test");
  h.check_ranks(4, "test");  // within the first node
}

TEST(Hostfile, CommentsBlankLinesAndMaxSlotsAreAccepted) {
  const Hostfile h =
      parse_hostfile("# nodes\n\nnode0 slots=2 max_slots=4   # first\n  node1   slots=2\n", "h");
  ASSERT_EQ(h.hosts.size(), 2u);
  EXPECT_EQ(h.hosts[0].host, "node0");
  EXPECT_EQ(h.hosts[0].line, 3);
  EXPECT_EQ(h.hosts[1].line, 4);
  EXPECT_EQ(h.total_slots(), 4);
}

struct BadHostfile {
  std::string text;
  std::vector<std::string> must;
};

TEST(Hostfile, EveryBadFileNamesItsLine) {
  const std::vector<BadHostfile> cases = {
      {"a slots=2\nb\n", {"h:2", "host b has no slots=N"}},
      {"a slots=0\n", {"h:1", "'slots=0' needs a whole number >= 1"}},
      {"a slots=two\n", {"h:1", "'slots=two'"}},
      {"a slots=2 cpus=4\n", {"h:1", "unexpected 'cpus=4' after host a"}},
      {"a slots=2\na slots=2\n", {"h:2", "host a is already listed on line 1"}},
      {"a slots=2\nb slots=4\n",
       {"h:2", "mismatched node layout", "host b has slots=4 but a (line 1) has slots=2"}},
      {"a slots=4 max_slots=2\n", {"h:1", "max_slots=2 below slots=4"}},
      {"# nothing\n", {"h: no hosts"}},
  };
  for (const BadHostfile& c : cases) {
    const std::string e = config_error([&] { parse_hostfile(c.text, "h"); });
    for (const std::string& m : c.must) EXPECT_NE(e.find(m), std::string::npos) << m << ": " << e;
  }
  const std::string e = config_error([] { load_hostfile("/nonexistent/hostfile"); });
  EXPECT_NE(e.find("hostfile /nonexistent/hostfile: cannot open it"), std::string::npos) << e;
}

TEST(Hostfile, RankCountsMustFillWholeNodes) {
  const Hostfile h = parse_hostfile("a slots=2\nb slots=2\n", "h");
  std::string e = config_error([&] { h.check_ranks(6, "--ranks 6"); });
  EXPECT_NE(e.find("--ranks 6: 6 ranks do not fit hostfile h (2 hosts x 2 slots = 4)"),
            std::string::npos)
      << e;
  e = config_error([&] { h.check_ranks(3, "--ranks 3"); });
  EXPECT_NE(e.find("mismatched node layout: 3 ranks fill hostfile h's nodes of 2 as 1 full nodes "
                   "and one of 1"),
            std::string::npos)
      << e;
}

}  // namespace
}  // namespace moe::runtime
