// shoal_native: the one small N-API addon for the syscalls Node lacks.
//
// This file: module init, error helpers, and the fd readiness primitive
// (waitFd) every async operation in the TS wrapper is built on.
//
// Why waitFd on a libuv poll handle: accept(), recvmsg() and connect() on our
// raw sockets must neither block the JS thread nor park a libuv threadpool
// thread (a pending vsock accept can wait forever and would starve fs/dns
// work). Instead each socket is O_NONBLOCK, the wrapper tries the syscall, and
// on EAGAIN awaits waitFd(), which registers the fd with the *existing* event
// loop (uv_poll_t, i.e. epoll) and resolves a promise when it is ready.
// No extra threads, and cancellation is just uv_poll_stop.
//
// Only N-API (NAPI_VERSION 8) and the libuv C API are used, no V8 API, so the
// same .node loads in Node 18 (guest, Debian bookworm) and Node 20 (host).
#include "common.h"

#include <fcntl.h>
#include <unistd.h>
#include <uv.h>

#include <memory>
#include <unordered_map>

namespace shoal {

Napi::Error ErrnoError(Napi::Env env, const char* syscall, int err) {
  std::string msg = std::string(syscall) + " failed: " + strerror(err);
  Napi::Error e = Napi::Error::New(env, msg);
  // Node's errno codes are names like "EAGAIN"; uv_err_name maps -errno to that.
  e.Set("code", Napi::String::New(env, uv_err_name(-err)));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

void ThrowErrno(Napi::Env env, const char* syscall, int err) {
  throw ErrnoError(env, syscall, err);
}

int ArgFd(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be an fd (number)");
  int32_t fd = info[i].As<Napi::Number>().Int32Value();
  if (fd < 0) throw Napi::RangeError::New(info.Env(), std::string(name) + " must be >= 0");
  return fd;
}

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 4294967295.0) || d != static_cast<double>(static_cast<uint64_t>(d)))
    throw Napi::RangeError::New(info.Env(), std::string(name) + " must be a uint32");
  return static_cast<uint32_t>(d);
}

uint64_t ToU64(Napi::Env env, Napi::Value v, const char* name) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t r = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(env, std::string(name) + " does not fit in u64");
    return r;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<uint64_t>(d)))
      throw Napi::RangeError::New(env, std::string(name) + " must be a non-negative safe integer");
    return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(env, std::string(name) + " must be a number or bigint");
}

uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i) throw Napi::TypeError::New(info.Env(), std::string(name) + " is required");
  return ToU64(info.Env(), info[i], name);
}

Napi::Value FromU64(Napi::Env env, uint64_t v) {
  if (v > 9007199254740991ULL) return Napi::BigInt::New(env, v);
  return Napi::Number::New(env, static_cast<double>(v));
}

bool SetNonBlocking(int fd, bool on) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return false;
  fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  return fcntl(fd, F_SETFL, fl) == 0;
}

// ---------------------------------------------------------------------------
// waitFd / cancelWait
// ---------------------------------------------------------------------------

namespace {

enum : int { kReadable = 1, kWritable = 2 };

struct Waiter {
  uv_poll_t handle;
  napi_env env;
  napi_deferred deferred;
  std::unique_ptr<Napi::AsyncContext> ctx;
  int fd;
};

// One map per addon instance (per Node environment / worker). libuv allows at
// most one poll handle per fd, so a second concurrent wait is refused (EBUSY).
struct FdState {
  std::unordered_map<int, Waiter*> waiters;
};

FdState* State(Napi::Env env) { return env.GetInstanceData<FdState>(); }

void FreeWaiter(uv_handle_t* h) { delete static_cast<Waiter*>(h->data); }

// Settle and tear down a waiter. `fromLoop` is true when called from the uv
// poll callback: then we open a callback scope so promise reactions
// (microtasks) run right away, as they do after any other Node I/O callback.
void Settle(Waiter* w, bool fromLoop, int uvStatus, int revents, bool cancelled) {
  uv_poll_stop(&w->handle);
  Napi::Env env(w->env);
  State(env)->waiters.erase(w->fd);
  {
    Napi::HandleScope hs(env);
    std::unique_ptr<Napi::CallbackScope> cs;
    if (fromLoop) cs.reset(new Napi::CallbackScope(env, *w->ctx));
    napi_value val;
    if (cancelled) {
      val = ErrnoError(env, "waitFd", ECANCELED).Value();
      napi_reject_deferred(env, w->deferred, val);
    } else if (uvStatus < 0) {
      val = ErrnoError(env, "waitFd", -uvStatus).Value();
      napi_reject_deferred(env, w->deferred, val);
    } else {
      int r = 0;
      if (revents & UV_READABLE) r |= kReadable;
      if (revents & UV_WRITABLE) r |= kWritable;
      if (revents & UV_DISCONNECT) r |= 4;
      val = Napi::Number::New(env, r);
      napi_resolve_deferred(env, w->deferred, val);
    }
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&w->handle), FreeWaiter);
}

void OnPoll(uv_poll_t* h, int status, int events) {
  Settle(static_cast<Waiter*>(h->data), true, status, events, false);
}

// waitFd(fd, events: 1=readable|2=writable, ref = true): Promise<revents>
// revents bits: 1 readable, 2 writable, 4 peer hung up.
Napi::Value WaitFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint32_t ev = ArgU32(info, 1, "events");
  bool ref = info.Length() < 3 || info[2].ToBoolean().Value();
  FdState* st = State(env);
  if (st->waiters.count(fd)) ThrowErrno(env, "waitFd", EBUSY);

  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) throw Napi::Error::New(env, "no uv loop");

  auto* w = new Waiter();
  w->env = env;
  w->fd = fd;
  w->handle.data = w;
  int rc = uv_poll_init(loop, &w->handle, fd);
  if (rc < 0) {
    delete w;
    ThrowErrno(env, "waitFd", -rc);
  }
  int uvev = 0;
  if (ev & kReadable) uvev |= UV_READABLE | UV_DISCONNECT;
  if (ev & kWritable) uvev |= UV_WRITABLE;
  rc = uv_poll_start(&w->handle, uvev, OnPoll);
  if (rc < 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&w->handle), FreeWaiter);
    ThrowErrno(env, "waitFd", -rc);
  }
  if (!ref) uv_unref(reinterpret_cast<uv_handle_t*>(&w->handle));
  w->ctx.reset(new Napi::AsyncContext(env, "shoal:waitFd"));
  napi_value promise;
  napi_create_promise(env, &w->deferred, &promise);
  st->waiters[fd] = w;
  return Napi::Value(env, promise);
}

// cancelWait(fd): reject a pending waitFd on fd with ECANCELED. Returns
// whether one was pending. Must be called before closing a waited-on fd.
Napi::Value CancelWait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  FdState* st = State(env);
  auto it = st->waiters.find(fd);
  if (it == st->waiters.end()) return Napi::Boolean::New(env, false);
  Settle(it->second, false, 0, 0, true);
  return Napi::Boolean::New(env, true);
}

// close(fd): cancels any waiter first (libuv must not poll a closed fd).
Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  auto it = State(env)->waiters.find(fd);
  if (it != State(env)->waiters.end()) Settle(it->second, false, 0, 0, true);
  // close() errors other than EBADF leave the fd closed anyway on Linux.
  if (close(fd) < 0 && errno == EBADF) ThrowErrno(env, "close");
  return env.Undefined();
}

Napi::Value SetNonBlockingJs(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  bool on = info.Length() < 2 || info[1].ToBoolean().Value();
  if (!SetNonBlocking(fd, on)) ThrowErrno(info.Env(), "fcntl");
  return info.Env().Undefined();
}

}  // namespace

void InitFd(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new FdState());
  exports.Set("waitFd", Napi::Function::New(env, WaitFd, "waitFd"));
  exports.Set("cancelWait", Napi::Function::New(env, CancelWait, "cancelWait"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("setNonBlocking", Napi::Function::New(env, SetNonBlockingJs, "setNonBlocking"));
}

}  // namespace shoal

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  shoal::InitFd(env, exports);
  shoal::InitSock(env, exports);
  shoal::InitBridge(env, exports);
  shoal::InitUffd(env, exports);
  shoal::InitPageServer(env, exports);
  shoal::InitGuest(env, exports);
  shoal::InitTesting(env, exports);
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  return exports;
}

NODE_API_MODULE(shoal_native, Init)
