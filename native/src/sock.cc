// Sockets Node cannot make: AF_VSOCK (guest agent under Firecracker), raw
// AF_UNIX fds we can pass SCM_RIGHTS over, and SCM_RIGHTS itself.
//
// Everything returned is SOCK_NONBLOCK | SOCK_CLOEXEC; "would block" returns
// null and the TS wrapper awaits waitFd() before retrying.
#include "common.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
// clang-format off: vm_sockets.h needs sys/socket.h first.
#include <linux/vm_sockets.h>
// clang-format on

#include <vector>

namespace shoal {
namespace {

// Unix socket paths are limited by sun_path (108 bytes incl. NUL).
void FillUnixAddr(Napi::Env env, const std::string& path, sockaddr_un* sa, socklen_t* len) {
  memset(sa, 0, sizeof(*sa));
  sa->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(sa->sun_path))
    throw Napi::RangeError::New(env, "unix socket path empty or longer than 107 bytes: " + path);
  memcpy(sa->sun_path, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString())
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

uint32_t OptU32(const Napi::CallbackInfo& info, size_t i, uint32_t dflt, const char* name) {
  if (info.Length() <= i || info[i].IsUndefined()) return dflt;
  return ArgU32(info, i, name);
}

// vsockListen(port, backlog = 128, cid = VMADDR_CID_ANY): fd
// The guest agent listens on a fixed port; Firecracker's hybrid vsock turns a
// host "CONNECT <port>" on its Unix socket into a guest-side accept().
Napi::Value VsockListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t port = ArgU32(info, 0, "port");
  uint32_t backlog = OptU32(info, 1, 128, "backlog");
  uint32_t cid = OptU32(info, 2, VMADDR_CID_ANY, "cid");
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket(AF_VSOCK)");
  sockaddr_vm sa;
  memset(&sa, 0, sizeof(sa));
  sa.svm_family = AF_VSOCK;
  sa.svm_cid = cid;
  sa.svm_port = port;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, "bind(AF_VSOCK)", e);
  }
  if (listen(fd, static_cast<int>(backlog)) < 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, "listen", e);
  }
  return Napi::Number::New(env, fd);
}

// vsockConnectStart(cid, port): fd. Non-blocking connect: the connection may
// still be in progress (EINPROGRESS); the wrapper awaits writability and then
// reads SO_ERROR with socketError().
Napi::Value VsockConnectStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t cid = ArgU32(info, 0, "cid");
  uint32_t port = ArgU32(info, 1, "port");
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket(AF_VSOCK)");
  sockaddr_vm sa;
  memset(&sa, 0, sizeof(sa));
  sa.svm_family = AF_VSOCK;
  sa.svm_cid = cid;
  sa.svm_port = port;
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0 && errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    ThrowErrno(env, "connect(AF_VSOCK)", e);
  }
  return Napi::Number::New(env, fd);
}

// vsockLocalCid(): this machine's CID (guest: its own; host: 2), via
// IOCTL_VM_SOCKETS_GET_LOCAL_CID on /dev/vsock.
Napi::Value VsockLocalCid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, "open(/dev/vsock)");
  unsigned int cid = 0;
  int rc = ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid);
  int e = errno;
  close(fd);
  if (rc < 0) ThrowErrno(env, "ioctl(IOCTL_VM_SOCKETS_GET_LOCAL_CID)", e);
  return Napi::Number::New(env, cid);
}

// socketError(fd): pending SO_ERROR (0 = none), e.g. after a non-blocking connect.
Napi::Value SocketError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) ThrowErrno(env, "getsockopt(SO_ERROR)");
  return Napi::Number::New(env, err);
}

// accept(listenFd): fd | null (EAGAIN). Works for any family (vsock, unix).
// accept4 sets NONBLOCK|CLOEXEC atomically on the new fd.
Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int lfd = ArgFd(info, 0, "listenFd");
  for (;;) {
    int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return Napi::Number::New(env, fd);
    if (errno == EINTR) continue;
    // A connection that was reset before we got to it is not our error.
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) return env.Null();
    ThrowErrno(env, "accept4");
  }
}

// unixListen(path, backlog = 128, mode = 0o600): fd. The page-fault handler
// socket should only be reachable by Firecracker (see Firecracker's doc).
Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  uint32_t backlog = OptU32(info, 1, 128, "backlog");
  uint32_t mode = OptU32(info, 2, 0600, "mode");
  sockaddr_un sa;
  socklen_t len;
  FillUnixAddr(env, path, &sa, &len);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket(AF_UNIX)");
  // fchmod on a socket fd does not affect the bound inode, so we chmod the path
  // after bind. (No umask games: umask is process-wide and libuv's threadpool
  // may be creating files concurrently. Connecting needs write permission,
  // which the usual umask already denies to group/other in the short window.)
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&sa), len);
  int e = errno;
  if (rc < 0) {
    close(fd);
    ThrowErrno(env, "bind(AF_UNIX)", e);
  }
  if (chmod(path.c_str(), mode) < 0 || listen(fd, static_cast<int>(backlog)) < 0) {
    e = errno;
    close(fd);
    unlink(path.c_str());
    ThrowErrno(env, "listen", e);
  }
  return Napi::Number::New(env, fd);
}

// unixConnect(path): fd. AF_UNIX stream connect completes immediately or fails
// (EAGAIN only when the listener's backlog is full; reported as an error).
Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  sockaddr_un sa;
  socklen_t len;
  FillUnixAddr(env, path, &sa, &len);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket(AF_UNIX)");
  int rc;
  do rc = connect(fd, reinterpret_cast<sockaddr*>(&sa), len);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, "connect(AF_UNIX)", e);
  }
  return Napi::Number::New(env, fd);
}

// socketpair(): [fd, fd], AF_UNIX stream, both non-blocking.
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    ThrowErrno(env, "socketpair");
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, sv[0]));
  a.Set(1u, Napi::Number::New(env, sv[1]));
  return a;
}

// peerCred(fd): {pid, uid, gid} of the connected peer (SO_PEERCRED), as
// recorded at connect() time. The page server uses it to name clients.
Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  ucred cr;
  socklen_t len = sizeof(cr);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) ThrowErrno(env, "getsockopt(SO_PEERCRED)");
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, cr.pid));
  o.Set("uid", Napi::Number::New(env, cr.uid));
  o.Set("gid", Napi::Number::New(env, cr.gid));
  return o;
}

// SCM_RIGHTS can carry at most SCM_MAX_FD (253) descriptors per message.
constexpr size_t kMaxFds = 253;

// sendFds(fd, fds[], payload: Buffer): bytesSent | null (EAGAIN).
// The fds ride on the first byte of the payload; a stream socket needs at
// least one data byte to carry ancillary data, so an empty payload is refused.
// A short write returns the count: the wrapper sends the rest without fds.
Napi::Value SendFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  if (info.Length() < 3 || !info[1].IsArray() || !info[2].IsBuffer())
    throw Napi::TypeError::New(env, "sendFds(fd, fds: number[], payload: Buffer)");
  Napi::Array arr = info[1].As<Napi::Array>();
  Napi::Buffer<char> payload = info[2].As<Napi::Buffer<char>>();
  if (payload.Length() == 0) throw Napi::RangeError::New(env, "payload must not be empty");
  if (arr.Length() > kMaxFds) throw Napi::RangeError::New(env, "too many fds (max 253)");
  std::vector<int> fds(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsNumber() || v.As<Napi::Number>().Int32Value() < 0)
      throw Napi::TypeError::New(env, "fds must be non-negative numbers");
    fds[i] = v.As<Napi::Number>().Int32Value();
  }
  iovec iov{payload.Data(), payload.Length()};
  msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * (fds.empty() ? 1 : fds.size())), 0);
  if (!fds.empty()) {
    msg.msg_control = ctl.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    // MSG_DONTWAIT: never block even if the caller handed us a blocking fd.
    // MSG_NOSIGNAL: a dead peer gives EPIPE instead of killing us with SIGPIPE.
    ssize_t n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) return Napi::Number::New(env, static_cast<double>(n));
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, "sendmsg");
  }
}

// recvFds(fd, maxFds, maxBytes): {fds, data, eof, truncatedFds} | null (EAGAIN)
// Received fds are O_CLOEXEC (MSG_CMSG_CLOEXEC). If the sender sent more fds
// than maxFds the kernel drops (closes) the extras and sets MSG_CTRUNC, which
// we report as truncatedFds so the caller can reject the message.
// maxFds may be 0 (plain data); then any fds sent are closed and reported.
Napi::Value RecvFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint32_t maxFds = ArgU32(info, 1, "maxFds");
  uint32_t maxBytes = ArgU32(info, 2, "maxBytes");
  if (maxFds > kMaxFds) throw Napi::RangeError::New(env, "maxFds must be <= 253");
  if (maxBytes == 0 || maxBytes > (64u << 20)) throw Napi::RangeError::New(env, "maxBytes must be 1..64MiB");
  std::vector<char> buf(maxBytes);
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * (maxFds ? maxFds : 1)), 0);
  iovec iov{buf.data(), buf.size()};
  msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (maxFds) {
    msg.msg_control = ctl.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * maxFds);
  }
  ssize_t n;
  for (;;) {
    n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n >= 0) break;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, "recvmsg");
  }
  Napi::Array fds = Napi::Array::New(env);
  uint32_t nfds = 0;
  bool truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const int* p = reinterpret_cast<const int*>(CMSG_DATA(c));
    for (size_t i = 0; i < cnt; i++) {
      int rfd;
      memcpy(&rfd, p + i, sizeof(int));
      // CMSG_SPACE rounds up, so the kernel may deliver a few more than asked:
      // close those ourselves so the caller gets at most maxFds.
      if (nfds >= maxFds) {
        close(rfd);
        truncated = true;
        continue;
      }
      fds.Set(nfds++, Napi::Number::New(env, rfd));
    }
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("fds", fds);
  o.Set("data", Napi::Buffer<char>::Copy(env, buf.data(), static_cast<size_t>(n)));
  // n == 0 with no fds on a stream socket: the peer closed its end.
  o.Set("eof", Napi::Boolean::New(env, n == 0 && nfds == 0));
  o.Set("truncatedFds", Napi::Boolean::New(env, truncated));
  return o;
}

// shutdown(fd, how: 0 RD | 1 WR | 2 RDWR)
Napi::Value Shutdown(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  uint32_t how = ArgU32(info, 1, "how");
  if (shutdown(fd, static_cast<int>(how)) < 0 && errno != ENOTCONN) ThrowErrno(info.Env(), "shutdown");
  return info.Env().Undefined();
}

}  // namespace

void InitSock(Napi::Env env, Napi::Object exports) {
  exports.Set("vsockListen", Napi::Function::New(env, VsockListen, "vsockListen"));
  exports.Set("vsockConnectStart", Napi::Function::New(env, VsockConnectStart, "vsockConnectStart"));
  exports.Set("vsockLocalCid", Napi::Function::New(env, VsockLocalCid, "vsockLocalCid"));
  exports.Set("socketError", Napi::Function::New(env, SocketError, "socketError"));
  exports.Set("accept", Napi::Function::New(env, Accept, "accept"));
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair, "socketpair"));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("sendFds", Napi::Function::New(env, SendFds, "sendFds"));
  exports.Set("recvFds", Napi::Function::New(env, RecvFds, "recvFds"));
  exports.Set("shutdown", Napi::Function::New(env, Shutdown, "shutdown"));
}

}  // namespace shoal
