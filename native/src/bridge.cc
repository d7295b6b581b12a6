// bridge(fd): make any stream socket usable as a Node stream.
//
// Why: Node's `new net.Socket({fd})` asks libuv what the fd is, and
// uv_guess_handle() only knows AF_INET/AF_INET6/AF_UNIX; an AF_VSOCK fd comes
// back UV_UNKNOWN_HANDLE and Node throws. So we create an AF_UNIX socketpair,
// hand one end to JS (`new net.Socket({fd})` accepts it as a pipe) and run a
// small native pump thread that copies bytes both ways between the other end
// and the original socket.
//
// Why a thread with read/write and not splice(): splice() needs a pipe in the
// middle for socket->socket, i.e. two pipes and four syscalls per chunk, which
// buys nothing at agent-channel rates; one poll() loop with a 64 KiB buffer per
// direction is simpler to get right for half-close and errors. One thread per
// bridge (the agent has one connection; a handful at most).
//
// Semantics (both directions are symmetric):
//  * EOF (read returns 0) on A: flush what is buffered to B, then
//    shutdown(B, SHUT_WR), so the other side sees a clean half-close; the
//    opposite direction keeps flowing.
//  * POLLHUP on B (its peer is fully gone, e.g. JS destroyed the socket): nothing
//    can be delivered to B any more; the direction A->B is finished.
//  * Any error (ECONNRESET, EPIPE, POLLERR): close both fds at once, so each
//    side sees EOF/reset.
//  * When both directions are finished the thread closes both fds and exits.
// The thread owns both fds from the moment bridge() returns.
#include "common.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

namespace shoal {
namespace {

constexpr size_t kBuf = 64 * 1024;

struct Dir {
  int from, to;
  char buf[kBuf];
  size_t off = 0, len = 0;
  bool eof = false;   // read side returned 0
  bool done = false;  // write side shut down or gone
};

// Returns false on a fatal error.
bool PumpRead(Dir& d) {
  if (d.eof || d.done || d.len) return true;
  ssize_t n = recv(d.from, d.buf, kBuf, MSG_DONTWAIT);
  if (n > 0) {
    d.off = 0;
    d.len = static_cast<size_t>(n);
  } else if (n == 0) {
    d.eof = true;
  } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    return false;
  }
  return true;
}

bool PumpWrite(Dir& d) {
  while (d.len && !d.done) {
    ssize_t n = send(d.to, d.buf + d.off, d.len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      d.off += static_cast<size_t>(n);
      d.len -= static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return true;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      return false;  // EPIPE / ECONNRESET: the receiver is gone
    }
  }
  if (d.eof && !d.len && !d.done) {
    shutdown(d.to, SHUT_WR);  // propagate the half-close
    d.done = true;
  }
  return true;
}

void Pump(int a, int b) {
  auto* ab = new Dir{a, b, {}};
  auto* ba = new Dir{b, a, {}};
  bool ok = true;
  while (ok && !(ab->done && ba->done)) {
    ok = PumpRead(*ab) && PumpRead(*ba) && PumpWrite(*ab) && PumpWrite(*ba);
    if (!ok || (ab->done && ba->done)) break;

    pollfd p[2];
    // For fd X: POLLIN if we want to read from X, POLLOUT if we have bytes for X.
    auto events = [](const Dir& out, const Dir& in) {
      short ev = 0;
      if (!out.eof && !out.done && !out.len) ev |= POLLIN;
      if (in.len && !in.done) ev |= POLLOUT;
      return ev;
    };
    p[0] = {a, events(*ab, *ba), 0};
    p[1] = {b, events(*ba, *ab), 0};
    // POLLHUP/POLLERR are always reported; if we neither want to read nor write
    // an fd whose hangup we already processed, leave it out to avoid spinning.
    if (!p[0].events && ba->done) p[0].fd = -1;
    if (!p[1].events && ab->done) p[1].fd = -1;
    int rc = poll(p, 2, -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      ok = false;
      break;
    }
    for (int i = 0; i < 2; i++) {
      Dir& into = i == 0 ? *ba : *ab;  // the direction that writes to p[i].fd
      if (p[i].revents & POLLERR) ok = false;
      if ((p[i].revents & POLLHUP) && !into.done) {
        // Peer of this fd is completely gone. Anything still buffered for it is
        // undeliverable; that is only an error if there was data in flight.
        if (into.len) ok = false;
        into.done = true;
        into.len = 0;
      }
    }
  }
  close(a);
  close(b);
  delete ab;
  delete ba;
}

// bridge(fd): unixFd. Takes ownership of fd.
Napi::Value Bridge(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    ThrowErrno(env, "socketpair");
  if (!SetNonBlocking(fd, true)) {
    int e = errno;
    close(sv[0]);
    close(sv[1]);
    ThrowErrno(env, "fcntl", e);
  }
  try {
    std::thread(Pump, fd, sv[1]).detach();
  } catch (const std::exception& ex) {
    close(sv[0]);
    close(sv[1]);
    throw Napi::Error::New(env, std::string("bridge: cannot start pump thread: ") + ex.what());
  }
  return Napi::Number::New(env, sv[0]);
}

}  // namespace

void InitBridge(Napi::Env env, Napi::Object exports) {
  exports.Set("bridge", Napi::Function::New(env, Bridge, "bridge"));
}

}  // namespace shoal
