// What a clone's guest agent does when a new host says hello, without starting a
// process (every fork+exec costs tens of ms in an emulated guest):
//
//  * clockSetRealtime: clock_settime(CLOCK_REALTIME), a restored snapshot lives in the past;
//  * randomAddEntropy: RNDADDENTROPY (+ RNDRESEEDCRNG) on /dev/urandom, so clones of one
//    snapshot stop sharing their crng state at once (a plain write only mixes the input pool);
//  * neighFlush / tcpDestroyEstablished: rtnetlink and sock_diag (SOCK_DESTROY), what
//    `ip neigh flush all` and `ss -K state established` do;
//  * linkSetMac / ipv4AddrFlush / ipv4AddrAdd / ipv4DefaultRoute: a bridged clone's own
//    identity, what `ip link set address`, `ip -4 addr flush`, `ip addr add` and
//    `ip route replace default` do.
//
// Netlink here is synchronous: the kernel answers rtnetlink and sock_diag requests
// within the sendmsg/recvmsg calls (no peer to wait for). These calls run on the
// agent's JS thread, which also serves the host link, so every exchange has one
// deadline for all its reads together (poll, then a non-blocking recv): a kernel
// that never ends a dump, or answers with sequence numbers we do not wait for,
// costs at most kExchangeTimeoutMs and an ETIMEDOUT, never a hung agent. A dump
// is read to its end before anything is deleted, on the same socket, and is
// bounded (kMaxEntries).
#include "common.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
// clang-format off: the netlink headers need sys/socket.h first.
#include <linux/inet_diag.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/random.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
// clang-format on

#include <chrono>
#include <cmath>
#include <functional>
#include <vector>

namespace shoal {
namespace {

// A guest has a handful of neighbours and connections; this only bounds memory
// if something (a hostile container) made millions of them.
constexpr size_t kMaxEntries = 1 << 16;
constexpr size_t kRecvBuffer = 64 * 1024;
// One request and all its answers; the kernel answers in microseconds, even under TCG.
constexpr int kExchangeTimeoutMs = 3000;

std::string ArgStr(const Napi::CallbackInfo& info, size_t i, const char* name, size_t maxLen) {
  if (info.Length() <= i || !info[i].IsString())
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a string");
  std::string s = info[i].As<Napi::String>().Utf8Value();
  if (s.empty() || s.size() > maxLen || s.find('\0') != std::string::npos)
    throw Napi::RangeError::New(info.Env(), std::string(name) + " must be 1 to " + std::to_string(maxLen) + " bytes without NUL");
  return s;
}

unsigned IfIndex(Napi::Env env, const std::string& name) {
  if (name.size() >= IFNAMSIZ) throw Napi::RangeError::New(env, "interface name too long: " + name);
  unsigned idx = if_nametoindex(name.c_str());
  if (idx == 0) ThrowErrno(env, "if_nametoindex");
  return idx;
}

in_addr ParseIpv4(Napi::Env env, const std::string& s, const char* what) {
  in_addr a;
  if (inet_pton(AF_INET, s.c_str(), &a) != 1) throw Napi::RangeError::New(env, std::string(what) + " is not an IPv4 address: " + s);
  return a;
}

// One netlink request under construction: header, fixed body, then attributes.
class Request {
 public:
  Request(uint16_t type, uint16_t flags, const void* body, size_t bodyLen) : buf_(NLMSG_SPACE(bodyLen), 0) {
    auto* h = Header();
    h->nlmsg_len = static_cast<uint32_t>(NLMSG_LENGTH(bodyLen));
    h->nlmsg_type = type;
    h->nlmsg_flags = static_cast<uint16_t>(flags | NLM_F_REQUEST);
    memcpy(NLMSG_DATA(h), body, bodyLen);
  }
  // From a message the kernel sent (a dump entry), re-typed: what `ip ... flush` does.
  Request(const nlmsghdr* from, uint16_t type, uint16_t flags) : buf_(NLMSG_ALIGN(from->nlmsg_len), 0) {
    memcpy(buf_.data(), from, from->nlmsg_len);
    auto* h = Header();
    h->nlmsg_type = type;
    h->nlmsg_flags = static_cast<uint16_t>(flags | NLM_F_REQUEST);
    h->nlmsg_pid = 0;
  }
  void Attr(uint16_t type, const void* data, size_t len) {
    size_t at = NLMSG_ALIGN(Header()->nlmsg_len);
    buf_.resize(at + RTA_SPACE(len), 0);
    auto* rta = reinterpret_cast<rtattr*>(buf_.data() + at);
    rta->rta_type = type;
    rta->rta_len = static_cast<uint16_t>(RTA_LENGTH(len));
    memcpy(RTA_DATA(rta), data, len);
    Header()->nlmsg_len = static_cast<uint32_t>(at + RTA_LENGTH(len));
  }
  nlmsghdr* Header() { return reinterpret_cast<nlmsghdr*>(buf_.data()); }

 private:
  std::vector<char> buf_;
};

class Netlink {
 public:
  Netlink(Napi::Env env, int protocol, int type = SOCK_RAW) : env_(env) {
    fd_ = socket(AF_NETLINK, type | SOCK_CLOEXEC, protocol);
    if (fd_ < 0) ThrowErrno(env, "socket(AF_NETLINK)");
    // Sends to the kernel do not wait for a peer, but bound them too (a full receive queue).
    timeval tv{kExchangeTimeoutMs / 1000, 0};
    if (setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
      int e = errno;
      close(fd_);
      ThrowErrno(env, "setsockopt(SO_SNDTIMEO)", e);
    }
    sockaddr_nl sa{};
    sa.nl_family = AF_NETLINK;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0) {
      int e = errno;
      close(fd_);
      ThrowErrno(env, "bind(AF_NETLINK)", e);
    }
  }
  ~Netlink() { close(fd_); }
  Netlink(const Netlink&) = delete;
  Netlink& operator=(const Netlink&) = delete;

  // A request with NLM_F_ACK: returns 0 or the kernel's (positive) errno.
  int Ack(Request& req) {
    req.Header()->nlmsg_flags |= NLM_F_ACK;
    int err = 0;
    Exchange(req, [&](const nlmsghdr*) {}, &err);
    return err;
  }

  // A dump: calls onEntry for every answer until NLMSG_DONE; throws on an error answer.
  void Dump(Request& req, const char* what, const std::function<void(const nlmsghdr*)>& onEntry) {
    req.Header()->nlmsg_flags |= NLM_F_DUMP;
    int err = 0;
    Exchange(req, onEntry, &err);
    if (err != 0) ThrowErrno(env_, what, err);
  }

 private:
  void Exchange(Request& req, const std::function<void(const nlmsghdr*)>& onEntry, int* err) {
    nlmsghdr* h = req.Header();
    h->nlmsg_seq = ++seq_;
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (sendto(fd_, h, h->nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel)) < 0) ThrowErrno(env_, "sendto(AF_NETLINK)");
    const bool dump = (h->nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;
    std::vector<char> buf(kRecvBuffer);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kExchangeTimeoutMs);
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
      if (left <= 0) ThrowErrno(env_, "netlink: no complete answer", ETIMEDOUT);
      pollfd pfd{fd_, POLLIN, 0};
      int ready = poll(&pfd, 1, static_cast<int>(left));
      if (ready < 0) {
        if (errno == EINTR) continue;
        ThrowErrno(env_, "poll(AF_NETLINK)");
      }
      if (ready == 0) ThrowErrno(env_, "netlink: no complete answer", ETIMEDOUT);
      sockaddr_nl from{};
      socklen_t fromLen = sizeof(from);
      ssize_t n = recvfrom(fd_, buf.data(), buf.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &fromLen);
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
        ThrowErrno(env_, "recvfrom(AF_NETLINK)");
      }
      if (from.nl_pid != 0) continue;  // only the kernel answers
      int len = static_cast<int>(n);
      for (auto* m = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(m, len); m = NLMSG_NEXT(m, len)) {
        if (m->nlmsg_seq != seq_) continue;  // a late answer to an earlier request
        if (m->nlmsg_type == NLMSG_DONE) return;
        if (m->nlmsg_type == NLMSG_ERROR) {
          if (m->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) ThrowErrno(env_, "netlink: short error message", EBADMSG);
          *err = -static_cast<const nlmsgerr*>(NLMSG_DATA(m))->error;
          return;  // an ACK (error 0) or the request's error; either ends it
        }
        onEntry(m);
        if (!dump) return;
      }
    }
  }

  Napi::Env env_;
  int fd_ = -1;
  uint32_t seq_ = 0;
};

// Copies of dump entries, bounded, so they can be deleted after the dump ended.
struct Entries {
  std::vector<std::vector<char>> list;
  void Add(Napi::Env env, const nlmsghdr* m) {
    if (list.size() >= kMaxEntries) ThrowErrno(env, "netlink dump", E2BIG);
    const char* p = reinterpret_cast<const char*>(m);
    list.emplace_back(p, p + m->nlmsg_len);
  }
};

// ---------------------------------------------------------------------------

// clockSetRealtime(ms: number): steps CLOCK_REALTIME to ms since the epoch.
Napi::Value ClockSetRealtime(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "ms must be a number");
  double ms = info[0].As<Napi::Number>().DoubleValue();
  // Refuse what no host clock says: before 2000 or after 2200.
  if (!std::isfinite(ms) || ms < 946684800000.0 || ms > 7258118400000.0)
    throw Napi::RangeError::New(env, "ms must be a time between 2000 and 2200");
  double sec = std::floor(ms / 1000.0);
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(sec);
  ts.tv_nsec = static_cast<long>(std::llround((ms - sec * 1000.0) * 1e6));
  if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
  if (clock_settime(CLOCK_REALTIME, &ts) < 0) ThrowErrno(env, "clock_settime");
  return env.Undefined();
}

// randomAddEntropy(bytes: Buffer, reseed: boolean, device = "/dev/urandom"): mixes bytes
// into the input pool crediting 8 bits each (RNDADDENTROPY, CAP_SYS_ADMIN) and, with
// reseed, makes the crng take them now (RNDRESEEDCRNG) instead of on its own schedule.
Napi::Value RandomAddEntropy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) throw Napi::TypeError::New(env, "bytes must be a Buffer");
  auto bytes = info[0].As<Napi::Buffer<uint8_t>>();
  if (bytes.Length() == 0 || bytes.Length() > 1024) throw Napi::RangeError::New(env, "bytes must hold 1 to 1024 bytes");
  bool reseed = info.Length() > 1 && info[1].ToBoolean().Value();
  std::string device = info.Length() > 2 && !info[2].IsUndefined() ? ArgStr(info, 2, "device", 255) : "/dev/urandom";
  int fd = open(device.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "open");
  std::vector<char> req(sizeof(rand_pool_info) + bytes.Length());
  auto* pool = reinterpret_cast<rand_pool_info*>(req.data());
  pool->entropy_count = static_cast<int>(8 * bytes.Length());
  pool->buf_size = static_cast<int>(bytes.Length());
  memcpy(pool->buf, bytes.Data(), bytes.Length());
  int rc = ioctl(fd, RNDADDENTROPY, pool);
  if (rc < 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, "ioctl(RNDADDENTROPY)", e);
  }
  if (reseed && ioctl(fd, RNDRESEEDCRNG) < 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, "ioctl(RNDRESEEDCRNG)", e);
  }
  close(fd);
  return env.Undefined();
}

// neighFlush(): number. Deletes every IPv4/IPv6 neighbour entry that is neither
// permanent nor NOARP (what `ip neigh flush all` deletes); returns how many.
Napi::Value NeighFlush(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Netlink nl(env, NETLINK_ROUTE);
  ndmsg body{};
  body.ndm_family = AF_UNSPEC;
  Request dump(RTM_GETNEIGH, 0, &body, sizeof(body));
  Entries entries;
  nl.Dump(dump, "RTM_GETNEIGH", [&](const nlmsghdr* m) {
    if (m->nlmsg_type != RTM_NEWNEIGH || m->nlmsg_len < NLMSG_LENGTH(sizeof(ndmsg))) return;
    auto* nd = static_cast<const ndmsg*>(NLMSG_DATA(m));
    if (nd->ndm_family != AF_INET && nd->ndm_family != AF_INET6) return;
    if (nd->ndm_state & (NUD_PERMANENT | NUD_NOARP)) return;
    entries.Add(env, m);
  });
  uint32_t deleted = 0;
  for (auto& e : entries.list) {
    Request del(reinterpret_cast<const nlmsghdr*>(e.data()), RTM_DELNEIGH, 0);
    int err = nl.Ack(del);
    if (err == 0) deleted++;
    else if (err != ENOENT) ThrowErrno(env, "RTM_DELNEIGH", err);  // ENOENT: already gone
  }
  return Napi::Number::New(env, deleted);
}

// tcpDestroyEstablished(): number. Aborts every established TCP socket, IPv4 and
// IPv6 (SOCK_DESTROY, CAP_NET_ADMIN, CONFIG_INET_DIAG_DESTROY), as
// `ss -K state established`: their owners see ECONNABORTED, the peers get a reset.
// Returns how many it aborted; a local peer closed by the reset is not counted.
Napi::Value TcpDestroyEstablished(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Netlink nl(env, NETLINK_SOCK_DIAG, SOCK_DGRAM);
  uint32_t destroyed = 0;
  for (uint8_t family : {AF_INET, AF_INET6}) {
    inet_diag_req_v2 req{};
    req.sdiag_family = family;
    req.sdiag_protocol = IPPROTO_TCP;
    req.idiag_states = 1u << TCP_ESTABLISHED;
    Request dump(SOCK_DIAG_BY_FAMILY, 0, &req, sizeof(req));
    std::vector<inet_diag_sockid> ids;
    nl.Dump(dump, "SOCK_DIAG_BY_FAMILY", [&](const nlmsghdr* m) {
      if (m->nlmsg_type != SOCK_DIAG_BY_FAMILY || m->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) return;
      auto* d = static_cast<const inet_diag_msg*>(NLMSG_DATA(m));
      if (d->idiag_family != family || d->idiag_state != TCP_ESTABLISHED) return;
      if (ids.size() >= kMaxEntries) ThrowErrno(env, "SOCK_DIAG_BY_FAMILY", E2BIG);
      ids.push_back(d->id);
    });
    for (const auto& id : ids) {
      inet_diag_req_v2 kill{};
      kill.sdiag_family = family;
      kill.sdiag_protocol = IPPROTO_TCP;
      kill.idiag_states = ~0u;
      kill.id = id;
      Request del(SOCK_DESTROY, 0, &kill, sizeof(kill));
      int err = nl.Ack(del);
      if (err == 0) destroyed++;
      else if (err != ENOENT) ThrowErrno(env, "SOCK_DESTROY", err);  // ENOENT: closed meanwhile
    }
  }
  return Napi::Number::New(env, destroyed);
}

// linkSetMac(ifname, mac: Buffer(6)): the link's hardware address (RTM_NEWLINK + IFLA_ADDRESS).
Napi::Value LinkSetMac(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string ifname = ArgStr(info, 0, "ifname", IFNAMSIZ - 1);
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "mac must be a Buffer");
  auto mac = info[1].As<Napi::Buffer<uint8_t>>();
  if (mac.Length() != 6) throw Napi::RangeError::New(env, "mac must hold 6 bytes");
  unsigned idx = IfIndex(env, ifname);
  ifinfomsg body{};
  body.ifi_family = AF_UNSPEC;
  body.ifi_index = static_cast<int>(idx);
  Request req(RTM_NEWLINK, 0, &body, sizeof(body));
  req.Attr(IFLA_ADDRESS, mac.Data(), 6);
  Netlink nl(env, NETLINK_ROUTE);
  if (int err = nl.Ack(req)) ThrowErrno(env, "RTM_NEWLINK", err);
  return env.Undefined();
}

// ipv4AddrFlush(ifname): number. Deletes the link's IPv4 addresses; returns how many.
Napi::Value Ipv4AddrFlush(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  unsigned idx = IfIndex(env, ArgStr(info, 0, "ifname", IFNAMSIZ - 1));
  Netlink nl(env, NETLINK_ROUTE);
  ifaddrmsg body{};
  body.ifa_family = AF_INET;
  Request dump(RTM_GETADDR, 0, &body, sizeof(body));
  Entries entries;
  nl.Dump(dump, "RTM_GETADDR", [&](const nlmsghdr* m) {
    if (m->nlmsg_type != RTM_NEWADDR || m->nlmsg_len < NLMSG_LENGTH(sizeof(ifaddrmsg))) return;
    auto* a = static_cast<const ifaddrmsg*>(NLMSG_DATA(m));
    if (a->ifa_family == AF_INET && a->ifa_index == idx) entries.Add(env, m);
  });
  uint32_t deleted = 0;
  for (auto& e : entries.list) {
    Request del(reinterpret_cast<const nlmsghdr*>(e.data()), RTM_DELADDR, 0);
    int err = nl.Ack(del);
    // Deleting a primary address also deletes its secondaries: those answer EADDRNOTAVAIL.
    if (err == 0) deleted++;
    else if (err != EADDRNOTAVAIL && err != ENOENT) ThrowErrno(env, "RTM_DELADDR", err);
  }
  return Napi::Number::New(env, deleted);
}

// ipv4AddrAdd(ifname, address, prefixLength): `ip addr add ADDRESS/PREFIX dev IFNAME`.
Napi::Value Ipv4AddrAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string ifname = ArgStr(info, 0, "ifname", IFNAMSIZ - 1);
  in_addr addr = ParseIpv4(env, ArgStr(info, 1, "address", 15), "address");
  uint32_t prefix = ArgU32(info, 2, "prefixLength");
  if (prefix > 32) throw Napi::RangeError::New(env, "prefixLength must be 0 to 32");
  unsigned idx = IfIndex(env, ifname);
  ifaddrmsg body{};
  body.ifa_family = AF_INET;
  body.ifa_prefixlen = static_cast<uint8_t>(prefix);
  body.ifa_scope = RT_SCOPE_UNIVERSE;
  body.ifa_index = idx;
  Request req(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &body, sizeof(body));
  req.Attr(IFA_LOCAL, &addr, sizeof(addr));
  req.Attr(IFA_ADDRESS, &addr, sizeof(addr));
  Netlink nl(env, NETLINK_ROUTE);
  if (int err = nl.Ack(req)) ThrowErrno(env, "RTM_NEWADDR", err);
  return env.Undefined();
}

// ipv4DefaultRoute(ifname, gateway): `ip route replace default via GATEWAY dev IFNAME`.
Napi::Value Ipv4DefaultRoute(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string ifname = ArgStr(info, 0, "ifname", IFNAMSIZ - 1);
  in_addr gw = ParseIpv4(env, ArgStr(info, 1, "gateway", 15), "gateway");
  unsigned idx = IfIndex(env, ifname);
  rtmsg body{};
  body.rtm_family = AF_INET;
  body.rtm_table = RT_TABLE_MAIN;
  body.rtm_protocol = RTPROT_BOOT;
  body.rtm_scope = RT_SCOPE_UNIVERSE;
  body.rtm_type = RTN_UNICAST;
  Request req(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &body, sizeof(body));
  req.Attr(RTA_GATEWAY, &gw, sizeof(gw));
  uint32_t oif = idx;
  req.Attr(RTA_OIF, &oif, sizeof(oif));
  Netlink nl(env, NETLINK_ROUTE);
  if (int err = nl.Ack(req)) ThrowErrno(env, "RTM_NEWROUTE", err);
  return env.Undefined();
}

}  // namespace

void InitGuest(Napi::Env env, Napi::Object exports) {
  exports.Set("clockSetRealtime", Napi::Function::New(env, ClockSetRealtime, "clockSetRealtime"));
  exports.Set("randomAddEntropy", Napi::Function::New(env, RandomAddEntropy, "randomAddEntropy"));
  exports.Set("neighFlush", Napi::Function::New(env, NeighFlush, "neighFlush"));
  exports.Set("tcpDestroyEstablished", Napi::Function::New(env, TcpDestroyEstablished, "tcpDestroyEstablished"));
  exports.Set("linkSetMac", Napi::Function::New(env, LinkSetMac, "linkSetMac"));
  exports.Set("ipv4AddrFlush", Napi::Function::New(env, Ipv4AddrFlush, "ipv4AddrFlush"));
  exports.Set("ipv4AddrAdd", Napi::Function::New(env, Ipv4AddrAdd, "ipv4AddrAdd"));
  exports.Set("ipv4DefaultRoute", Napi::Function::New(env, Ipv4DefaultRoute, "ipv4DefaultRoute"));
}

}  // namespace shoal
