// The userfaultfd page server for Firecracker's "Uffd" memory backend.
//
// Firecracker (snapshot/load with mem_backend.backend_type = "Uffd") mmaps
// guest memory anonymously, registers it with a userfaultfd (MISSING mode,
// UFFD_FEATURE_EVENT_REMOVE, O_NONBLOCK), connects to our Unix socket and
// sends the uffd via SCM_RIGHTS with a JSON array of GuestRegionUffdMapping.
// The TS side (src/snapshot/uffd-server.ts) does that handshake and then hands
// the uffd + regions here. From then on everything is native:
//
//  * pageServerStart(memFile) maps the snapshot memory file once, PROT_READ +
//    MAP_PRIVATE. All clones of that snapshot are served from this one mapping,
//    i.e. from the page cache: a page read from disk once serves every clone.
//  * pageServerAddClient() starts one thread per clone. The thread polls the
//    clone's uffd, its handshake socket and a stop eventfd, and answers:
//      - UFFD_EVENT_PAGEFAULT: UFFDIO_COPY of the page at region.offset +
//        (addr - region.base) from the mapping (the kernel copies it into the
//        clone and wakes the vCPU). If the page lies in a range the clone
//        released (see REMOVE) it gets UFFDIO_ZEROPAGE instead.
//      - UFFD_EVENT_REMOVE: madvise(MADV_DONTNEED) by Firecracker's balloon;
//        the range is remembered so later faults there see zeroes, as
//        Firecracker's own example handler does (the guest gave those pages
//        up; their snapshot contents must not reappear).
//    It exits when the clone dies: the socket Firecracker keeps open hangs up
//    (POLLHUP/POLLRDHUP/read 0), or UFFDIO_COPY says the mm is gone (ESRCH),
//    or the uffd errors (EBADF/POLLERR); or when asked to stop. Each thread
//    only touches its own fds, so one clone dying never disturbs the others.
//  * Stats per client are atomics readable from JS at any time.
//  * On exit a client thread closes its uffd and socket and signals a "done"
//    eventfd that JS can waitFd() on, then JS reaps it (join + final stats).
//
// Ordering caveat (same as Firecracker's example handler): a REMOVE for a page
// can reach us after a fault for it when they come from different Firecracker
// threads; we process all REMOVEs of a batch before its faults, but a fault
// read in an earlier batch than a causally-earlier REMOVE is served from the
// file. The guest zeroes pages it gets back from the balloon anyway.
#include "common.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace shoal {
namespace {

struct Region {
  uint64_t base, size, offset, pageSize;
};

struct Server {
  int id;
  std::string path;
  const uint8_t* map = nullptr;
  uint64_t len = 0;
  ~Server() {
    if (map) munmap(const_cast<uint8_t*>(map), len);
  }
};

// Non-overlapping, merged [start, end) ranges released by UFFD_EVENT_REMOVE.
class RangeSet {
 public:
  void Add(uint64_t s, uint64_t e) {
    if (s >= e) return;
    auto it = m_.upper_bound(s);
    if (it != m_.begin()) {
      auto p = std::prev(it);
      if (p->second >= s) {  // overlaps or touches the previous range
        s = p->first;
        e = std::max(e, p->second);
        it = m_.erase(p);
      }
    }
    while (it != m_.end() && it->first <= e) {
      e = std::max(e, it->second);
      it = m_.erase(it);
    }
    m_[s] = e;
  }
  bool Contains(uint64_t a) const {
    auto it = m_.upper_bound(a);
    if (it == m_.begin()) return false;
    return a < std::prev(it)->second;
  }

 private:
  std::map<uint64_t, uint64_t> m_;
};

enum class State : int { kRunning = 0, kExited = 1 };

struct Client {
  int id;
  std::shared_ptr<Server> server;  // keeps the mapping alive while we serve
  int uffd, conn, stopFd, doneFd;
  std::vector<Region> regions;
  std::thread thread;
  bool joined = false;

  std::atomic<uint64_t> faults{0};       // UFFD_EVENT_PAGEFAULT events handled
  std::atomic<uint64_t> pagesCopied{0};  // pages filled from the snapshot file
  std::atomic<uint64_t> pagesZeroed{0};  // pages filled with zeroes (removed / beyond file)
  std::atomic<uint64_t> removes{0};      // UFFD_EVENT_REMOVE events
  std::atomic<uint64_t> eexist{0};       // page already present (raced), woken instead
  std::atomic<uint64_t> retries{0};      // EAGAIN (a non-cooperative event was pending)
  std::atomic<uint64_t> unknown{0};      // faults outside all regions / unexpected errors
  std::atomic<int> state{static_cast<int>(State::kRunning)};
  // Written by the thread before `state` is set to kExited (release).
  std::string exitReason;
  int exitErrno = 0;  // last errno seen (also for non-fatal copy errors)
};

// Registries. Deliberately heap-allocated and never destroyed: at process exit
// client threads may still be running, and destroying a joinable std::thread
// (inside a Client) from a static destructor would call std::terminate().
std::mutex& g_mu = *new std::mutex;
int g_nextId = 1;
std::map<int, std::shared_ptr<Server>>& g_servers = *new std::map<int, std::shared_ptr<Server>>;
std::map<int, std::shared_ptr<Client>>& g_clients = *new std::map<int, std::shared_ptr<Client>>;

enum class Serve { kOk, kAgain, kGone };

// A zero source for hugetlbfs regions (UFFDIO_ZEROPAGE is anon/shmem only).
const uint8_t* ZeroSource(uint64_t len) {
  static std::mutex mu;
  static std::map<uint64_t, void*> bufs;
  std::lock_guard<std::mutex> l(mu);
  auto it = bufs.find(len);
  if (it != bufs.end()) return static_cast<const uint8_t*>(it->second);
  void* p = mmap(nullptr, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  bufs[len] = p;
  return static_cast<const uint8_t*>(p);
}

Serve Copy(Client& c, uint64_t dst, const uint8_t* src, uint64_t len, bool zero) {
  int rc;
  if (zero && len == static_cast<uint64_t>(sysconf(_SC_PAGESIZE))) {
    uffdio_zeropage z;
    z.range.start = dst;
    z.range.len = len;
    z.mode = 0;  // wake the faulting thread
    rc = ioctl(c.uffd, UFFDIO_ZEROPAGE, &z);
  } else {
    if (zero) src = ZeroSource(len);
    if (!src) {
      c.exitErrno = ENOMEM;
      return Serve::kGone;
    }
    uffdio_copy cp;
    cp.dst = dst;
    cp.src = reinterpret_cast<uint64_t>(src);
    cp.len = len;
    cp.mode = 0;  // wake the faulting thread
    cp.copy = 0;
    rc = ioctl(c.uffd, UFFDIO_COPY, &cp);
  }
  if (rc == 0) {
    (zero ? c.pagesZeroed : c.pagesCopied)++;
    return Serve::kOk;
  }
  switch (errno) {
    case EAGAIN:
      // A non-cooperative event (REMOVE/UNMAP) is queued and not yet read:
      // the kernel refuses to populate until we read it. Retry after reading.
      c.retries++;
      return Serve::kAgain;
    case EEXIST: {
      // Already populated (two vCPUs faulted on the same page). Make sure any
      // thread still waiting on it is woken.
      c.eexist++;
      uffdio_range r{dst, len};
      ioctl(c.uffd, UFFDIO_WAKE, &r);
      return Serve::kOk;
    }
    case ESRCH:  // the clone's mm is gone: it exited
      c.exitErrno = ESRCH;
      return Serve::kGone;
    case ENOENT:  // the range was unmapped/unregistered meanwhile; nothing waits
      c.unknown++;
      return Serve::kOk;
    default:
      c.unknown++;
      c.exitErrno = errno;
      return Serve::kOk;
  }
}

Serve ServeFault(Client& c, const RangeSet& removed, uint64_t addr) {
  const Region* r = nullptr;
  for (const Region& x : c.regions)
    if (addr >= x.base && addr < x.base + x.size) {
      r = &x;
      break;
    }
  if (!r) {
    c.unknown++;  // not ours: Firecracker registers exactly what it sends
    return Serve::kOk;
  }
  uint64_t page = addr & ~(r->pageSize - 1);
  if (removed.Contains(page)) return Copy(c, page, nullptr, r->pageSize, true);
  uint64_t off = r->offset + (page - r->base);
  const Server& s = *c.server;
  if (off + r->pageSize > s.len) return Copy(c, page, nullptr, r->pageSize, true);
  return Copy(c, page, s.map + off, r->pageSize, false);
}

void Run(std::shared_ptr<Client> cp) {
  Client& c = *cp;
  RangeSet removed;
  std::vector<uint64_t> pending;  // faults to (re)try
  std::vector<uffd_msg> msgs(64);
  std::string reason;

  // poll() on a blocking uffd always reports POLLERR; Firecracker's is
  // O_NONBLOCK already, but be robust to hand-made ones.
  SetNonBlocking(c.uffd, true);

  for (;;) {
    pollfd p[3];
    nfds_t n = 0;
    p[n++] = {c.uffd, POLLIN, 0};
    p[n++] = {c.stopFd, POLLIN, 0};
    if (c.conn >= 0) p[n++] = {c.conn, POLLIN | POLLRDHUP, 0};
    // With retries pending, wake up soon even if nothing new arrives.
    int rc = poll(p, n, pending.empty() ? -1 : 1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      reason = "poll-error";
      c.exitErrno = errno;
      break;
    }
    if (p[1].revents) {
      reason = "stopped";
      break;
    }
    if (c.conn >= 0 && p[2].revents) {
      // Firecracker sends nothing after the handshake (newer versions may send
      // messages we do not use); drain, and treat EOF/hangup as the clone's death.
      char buf[4096];
      ssize_t r = (p[2].revents & POLLIN) ? recv(c.conn, buf, sizeof buf, MSG_DONTWAIT) : 0;
      if (r == 0 || (p[2].revents & (POLLHUP | POLLRDHUP | POLLERR)) ||
          (r < 0 && errno != EAGAIN && errno != EINTR)) {
        reason = "peer-closed";
        break;
      }
    }
    if (p[0].revents & (POLLERR | POLLNVAL)) {
      reason = "uffd-error";
      c.exitErrno = (p[0].revents & POLLNVAL) ? EBADF : EIO;
      break;
    }

    // Drain all queued events: reading a REMOVE unblocks pending copies.
    std::vector<uint64_t> batch;
    bool dead = false;
    for (;;) {
      ssize_t r = read(c.uffd, msgs.data(), msgs.size() * sizeof(uffd_msg));
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) {
          reason = "uffd-read-error";
          c.exitErrno = errno;
          dead = true;
        }
        break;
      }
      if (r == 0) {  // not expected from a uffd, but means "no more events ever"
        reason = "uffd-eof";
        dead = true;
        break;
      }
      for (size_t i = 0; i < static_cast<size_t>(r) / sizeof(uffd_msg); i++) {
        const uffd_msg& m = msgs[i];
        if (m.event == UFFD_EVENT_PAGEFAULT) {
          c.faults++;
          batch.push_back(m.arg.pagefault.address);
        } else if (m.event == UFFD_EVENT_REMOVE || m.event == UFFD_EVENT_UNMAP) {
          c.removes++;
          removed.Add(m.arg.remove.start, m.arg.remove.end);
        }
        // FORK/REMAP are only sent if requested in UFFDIO_API; Firecracker does not.
      }
      if (static_cast<size_t>(r) < msgs.size() * sizeof(uffd_msg)) break;
    }
    if (dead) break;

    // Serve: earlier deferred faults first, then this batch (REMOVEs of this
    // batch are already recorded, so faults in removed ranges get zeroes).
    pending.insert(pending.end(), batch.begin(), batch.end());
    std::vector<uint64_t> again;
    for (uint64_t a : pending) {
      Serve s = dead ? Serve::kGone : ServeFault(c, removed, a);
      if (s == Serve::kAgain) again.push_back(a);
      if (s == Serve::kGone) dead = true;
    }
    pending.swap(again);
    if (dead) {
      reason = c.exitErrno == ESRCH ? "mm-gone" : "copy-error";
      break;
    }
  }

  close(c.uffd);
  c.uffd = -1;
  if (c.conn >= 0) close(c.conn);
  c.conn = -1;
  c.exitReason = reason;
  c.state.store(static_cast<int>(State::kExited), std::memory_order_release);
  uint64_t one = 1;
  (void)!write(c.doneFd, &one, sizeof one);
}

// ---------------------------------------------------------------------------
// JS API
// ---------------------------------------------------------------------------

std::shared_ptr<Server> FindServer(Napi::Env env, int id) {
  std::lock_guard<std::mutex> l(g_mu);
  auto it = g_servers.find(id);
  if (it == g_servers.end()) throw Napi::Error::New(env, "no such page server: " + std::to_string(id));
  return it->second;
}

std::shared_ptr<Client> FindClient(Napi::Env env, int id) {
  std::lock_guard<std::mutex> l(g_mu);
  auto it = g_clients.find(id);
  if (it == g_clients.end()) throw Napi::Error::New(env, "no such page server client: " + std::to_string(id));
  return it->second;
}

Napi::Object StatsObject(Napi::Env env, Client& c) {
  Napi::Object o = Napi::Object::New(env);
  bool exited = c.state.load(std::memory_order_acquire) == static_cast<int>(State::kExited);
  o.Set("id", Napi::Number::New(env, c.id));
  o.Set("running", Napi::Boolean::New(env, !exited));
  o.Set("faults", Napi::Number::New(env, static_cast<double>(c.faults.load())));
  o.Set("pagesCopied", Napi::Number::New(env, static_cast<double>(c.pagesCopied.load())));
  o.Set("pagesZeroed", Napi::Number::New(env, static_cast<double>(c.pagesZeroed.load())));
  o.Set("removeEvents", Napi::Number::New(env, static_cast<double>(c.removes.load())));
  o.Set("eexist", Napi::Number::New(env, static_cast<double>(c.eexist.load())));
  o.Set("retries", Napi::Number::New(env, static_cast<double>(c.retries.load())));
  o.Set("unhandled", Napi::Number::New(env, static_cast<double>(c.unknown.load())));
  if (exited) {
    o.Set("exitReason", Napi::String::New(env, c.exitReason));
    o.Set("exitErrno", Napi::Number::New(env, c.exitErrno));
  }
  return o;
}

// pageServerStart(memFilePath): {id, size}
Napi::Value PageServerStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "memFile must be a string");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "open(memFile)");
  struct stat st;
  if (fstat(fd, &st) < 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, "fstat(memFile)", e);
  }
  if (st.st_size <= 0) {
    close(fd);
    throw Napi::Error::New(env, "snapshot memory file is empty: " + path);
  }
  // PROT_READ + MAP_PRIVATE: we never write; pages come straight from the page
  // cache and are shared by every clone and with any other reader of the file.
  // MAP_NORESERVE: no swap accounting for a read-only mapping of guest RAM size.
  void* m = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  int e = errno;
  close(fd);  // the mapping keeps the file referenced
  if (m == MAP_FAILED) ThrowErrno(env, "mmap(memFile)", e);
  auto s = std::make_shared<Server>();
  s->path = path;
  s->map = static_cast<const uint8_t*>(m);
  s->len = static_cast<uint64_t>(st.st_size);
  {
    std::lock_guard<std::mutex> l(g_mu);
    s->id = g_nextId++;
    g_servers[s->id] = s;
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", Napi::Number::New(env, s->id));
  o.Set("size", Napi::Number::New(env, static_cast<double>(s->len)));
  return o;
}

// pageServerAddClient(serverId, uffd, regions[], connFd = -1): {id, doneFd}
// Takes ownership of uffd and connFd (closed when the client thread exits),
// also when it throws.
Napi::Value PageServerAddClient(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int uffd = ArgFd(info, 1, "uffd");
  int conn = -1;
  if (info.Length() > 3 && info[3].IsNumber() && info[3].As<Napi::Number>().Int32Value() >= 0)
    conn = info[3].As<Napi::Number>().Int32Value();
  auto fail = [&](const Napi::Error& e) {
    close(uffd);
    if (conn >= 0) close(conn);
    throw e;
  };
  std::shared_ptr<Server> s;
  std::vector<Region> regions;
  try {
    s = FindServer(env, static_cast<int>(ArgU32(info, 0, "serverId")));
    if (info.Length() < 3 || !info[2].IsArray()) throw Napi::TypeError::New(env, "regions must be an array");
    Napi::Array arr = info[2].As<Napi::Array>();
    if (arr.Length() == 0) throw Napi::RangeError::New(env, "regions must not be empty");
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Value v = arr.Get(i);
      if (!v.IsObject()) throw Napi::TypeError::New(env, "region must be an object");
      Napi::Object o = v.As<Napi::Object>();
      Region r;
      r.base = ToU64(env, o.Get("base_host_virt_addr"), "base_host_virt_addr");
      r.size = ToU64(env, o.Get("size"), "size");
      r.offset = ToU64(env, o.Get("offset"), "offset");
      r.pageSize = ToU64(env, o.Get("page_size"), "page_size");
      if (r.pageSize < 4096 || (r.pageSize & (r.pageSize - 1)))
        throw Napi::RangeError::New(env, "page_size must be a power of two >= 4096");
      if ((r.base | r.size | r.offset) & (r.pageSize - 1))
        throw Napi::RangeError::New(env, "region base/size/offset must be page_size aligned");
      if (r.size == 0 || r.base + r.size < r.base) throw Napi::RangeError::New(env, "bad region size");
      regions.push_back(r);
    }
  } catch (const Napi::Error& e) {
    fail(e);
  }
  auto c = std::make_shared<Client>();
  c->server = s;
  c->uffd = uffd;
  c->conn = conn;
  c->regions = std::move(regions);
  // stopFd: JS -> thread "exit now". doneFd: thread -> JS "I exited".
  c->stopFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  c->doneFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (c->stopFd < 0 || c->doneFd < 0) {
    int e = errno;
    if (c->stopFd >= 0) close(c->stopFd);
    if (c->doneFd >= 0) close(c->doneFd);
    fail(ErrnoError(env, "eventfd", e));
  }
  {
    std::lock_guard<std::mutex> l(g_mu);
    c->id = g_nextId++;
    g_clients[c->id] = c;
  }
  try {
    c->thread = std::thread(Run, c);
  } catch (const std::exception& ex) {
    std::lock_guard<std::mutex> l(g_mu);
    g_clients.erase(c->id);
    close(c->stopFd);
    close(c->doneFd);
    fail(Napi::Error::New(env, std::string("cannot start page server thread: ") + ex.what()));
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", Napi::Number::New(env, c->id));
  o.Set("doneFd", Napi::Number::New(env, c->doneFd));
  return o;
}

// pageServerClientStats(clientId): stats (works while running and after exit).
Napi::Value PageServerClientStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto c = FindClient(env, static_cast<int>(ArgU32(info, 0, "clientId")));
  return StatsObject(env, *c);
}

// Stop (if running), join, close the eventfds and forget the client.
void Reap(const std::shared_ptr<Client>& c) {
  if (c->joined) return;
  uint64_t one = 1;
  (void)!write(c->stopFd, &one, sizeof one);
  // The thread reacts to stopFd within one poll() round; no long blocking here.
  c->thread.join();
  c->joined = true;
  close(c->stopFd);
  close(c->doneFd);
  std::lock_guard<std::mutex> l(g_mu);
  g_clients.erase(c->id);
}

// pageServerReapClient(clientId): final stats. Stops the client if running.
// The caller must not be waiting on its doneFd (cancelWait first).
Napi::Value PageServerReapClient(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto c = FindClient(env, static_cast<int>(ArgU32(info, 0, "clientId")));
  Reap(c);
  return StatsObject(env, *c);
}

// pageServerStop(serverId): stop and reap all its clients, drop the mapping
// (unmapped once the last client thread let go of it).
Napi::Value PageServerStop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int id = static_cast<int>(ArgU32(info, 0, "serverId"));
  std::vector<std::shared_ptr<Client>> mine;
  {
    std::lock_guard<std::mutex> l(g_mu);
    if (!g_servers.erase(id)) return Napi::Boolean::New(env, false);
    for (auto& kv : g_clients)
      if (kv.second->server->id == id) mine.push_back(kv.second);
  }
  for (auto& c : mine) Reap(c);
  return Napi::Boolean::New(env, true);
}

}  // namespace

void InitPageServer(Napi::Env env, Napi::Object exports) {
  exports.Set("pageServerStart", Napi::Function::New(env, PageServerStart, "pageServerStart"));
  exports.Set("pageServerAddClient", Napi::Function::New(env, PageServerAddClient, "pageServerAddClient"));
  exports.Set("pageServerClientStats", Napi::Function::New(env, PageServerClientStats, "pageServerClientStats"));
  exports.Set("pageServerReapClient", Napi::Function::New(env, PageServerReapClient, "pageServerReapClient"));
  exports.Set("pageServerStop", Napi::Function::New(env, PageServerStop, "pageServerStop"));
}

}  // namespace shoal
