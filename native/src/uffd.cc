// userfaultfd primitives (see Documentation/admin-guide/mm/userfaultfd.rst).
//
// These are thin wrappers so JS (tests, the Firecracker-side test peer, and
// anything exotic) can drive a uffd by hand. The hot path, serving
// Firecracker's page faults, lives entirely in pageserver.cc.
#include "common.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <vector>

namespace shoal {
namespace {

// uffdCreate(flags = O_CLOEXEC|O_NONBLOCK): fd
// flags: O_CLOEXEC / O_NONBLOCK, plus UFFD_USER_MODE_ONLY (1) to only trap
// user-mode faults. Firecracker creates its uffd non-blocking + cloexec with
// user_mode_only=false (KVM touches guest memory from kernel mode).
// The userfaultfd(2) syscall needs CAP_SYS_PTRACE for kernel-mode faults when
// vm.unprivileged_userfaultfd=0; /dev/userfaultfd (kernel >= 6.1) is gated by
// file permissions instead, so it is the fallback on EPERM.
Napi::Value UffdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t flags = info.Length() > 0 ? ArgU32(info, 0, "flags") : (O_CLOEXEC | O_NONBLOCK);
  long fd = syscall(SYS_userfaultfd, static_cast<int>(flags));
  if (fd < 0 && (errno == EPERM || errno == ENOSYS)) {
    int first = errno;
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) ThrowErrno(env, "userfaultfd", first);
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, static_cast<int>(flags));
    int e = errno;
    close(dev);
    if (fd < 0) ThrowErrno(env, "ioctl(USERFAULTFD_IOC_NEW)", e);
  } else if (fd < 0) {
    ThrowErrno(env, "userfaultfd");
  }
  return Napi::Number::New(env, static_cast<double>(fd));
}

// uffdApiHandshake(fd, features): {features, ioctls}
// UFFDIO_API must be the first ioctl on a new uffd: it fixes the API version
// and enables optional features, e.g. UFFD_FEATURE_EVENT_REMOVE (8) so
// madvise(MADV_DONTNEED) (balloon inflation) is reported as UFFD_EVENT_REMOVE.
// Returns the features the kernel supports and the ioctl bitmask.
Napi::Value UffdApiHandshake(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint64_t features = info.Length() > 1 ? ArgU64(info, 1, "features") : 0;
  uffdio_api api;
  memset(&api, 0, sizeof(api));
  api.api = UFFD_API;
  api.features = features;
  if (ioctl(fd, UFFDIO_API, &api) < 0) ThrowErrno(env, "ioctl(UFFDIO_API)");
  Napi::Object o = Napi::Object::New(env);
  o.Set("features", FromU64(env, api.features));
  o.Set("ioctls", FromU64(env, api.ioctls));
  return o;
}

// uffdRegister(fd, addr, len, mode = MISSING): ioctls available on the range.
// MODE_MISSING (1): faults on not-yet-populated pages are reported, which is
// what a snapshot-restore page server needs.
Napi::Value UffdRegister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uffdio_register reg;
  memset(&reg, 0, sizeof(reg));
  reg.range.start = ArgU64(info, 1, "addr");
  reg.range.len = ArgU64(info, 2, "len");
  reg.mode = info.Length() > 3 ? ArgU64(info, 3, "mode") : UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) ThrowErrno(env, "ioctl(UFFDIO_REGISTER)");
  return FromU64(env, reg.ioctls);
}

Napi::Value UffdUnregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uffdio_range r;
  r.start = ArgU64(info, 1, "addr");
  r.len = ArgU64(info, 2, "len");
  if (ioctl(fd, UFFDIO_UNREGISTER, &r) < 0) ThrowErrno(env, "ioctl(UFFDIO_UNREGISTER)");
  return env.Undefined();
}

// uffdCopy(fd, dst, src: Buffer, mode = 0): bytes copied.
// UFFDIO_COPY atomically fills the missing pages at dst with src's bytes and
// (unless MODE_DONTWAKE) wakes the faulting threads. len = src.length, which
// must be a multiple of the page size.
Napi::Value UffdCopy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint64_t dst = ArgU64(info, 1, "dst");
  if (info.Length() < 3 || !info[2].IsBuffer()) throw Napi::TypeError::New(env, "src must be a Buffer");
  Napi::Buffer<uint8_t> src = info[2].As<Napi::Buffer<uint8_t>>();
  uffdio_copy c;
  memset(&c, 0, sizeof(c));
  c.dst = dst;
  c.src = reinterpret_cast<uint64_t>(src.Data());
  c.len = src.Length();
  c.mode = info.Length() > 3 ? ArgU64(info, 3, "mode") : 0;
  if (ioctl(fd, UFFDIO_COPY, &c) < 0) ThrowErrno(env, "ioctl(UFFDIO_COPY)");
  return Napi::Number::New(env, static_cast<double>(c.copy));
}

// uffdZeropage(fd, addr, len, mode = 0): bytes zeroed. Maps the zero page
// (anonymous memory only; hugetlbfs needs UFFDIO_COPY from a zero buffer).
Napi::Value UffdZeropage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uffdio_zeropage z;
  memset(&z, 0, sizeof(z));
  z.range.start = ArgU64(info, 1, "addr");
  z.range.len = ArgU64(info, 2, "len");
  z.mode = info.Length() > 3 ? ArgU64(info, 3, "mode") : 0;
  if (ioctl(fd, UFFDIO_ZEROPAGE, &z) < 0) ThrowErrno(env, "ioctl(UFFDIO_ZEROPAGE)");
  return Napi::Number::New(env, static_cast<double>(z.zeropage));
}

// uffdWake(fd, addr, len): wake threads waiting on a range that was populated
// with MODE_DONTWAKE, or whose fault raced with another populate (EEXIST).
Napi::Value UffdWake(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uffdio_range r;
  r.start = ArgU64(info, 1, "addr");
  r.len = ArgU64(info, 2, "len");
  if (ioctl(fd, UFFDIO_WAKE, &r) < 0) ThrowErrno(env, "ioctl(UFFDIO_WAKE)");
  return env.Undefined();
}

// uffdReadEvents(fd, max = 64): UffdEvent[] (empty when none are pending).
// Requires an O_NONBLOCK uffd (a blocking one would park the JS thread); use
// waitFd(fd, readable) to wait for events.
Napi::Value UffdReadEvents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint32_t max = info.Length() > 1 ? ArgU32(info, 1, "max") : 64;
  if (max == 0 || max > 1024) throw Napi::RangeError::New(env, "max must be 1..1024");
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) ThrowErrno(env, "fcntl");
  if (!(fl & O_NONBLOCK)) throw Napi::Error::New(env, "uffdReadEvents needs an O_NONBLOCK uffd");
  std::vector<uffd_msg> msgs(max);
  ssize_t n;
  do n = read(fd, msgs.data(), sizeof(uffd_msg) * max);
  while (n < 0 && errno == EINTR);
  Napi::Array out = Napi::Array::New(env);
  if (n < 0) {
    if (errno == EAGAIN) return out;
    ThrowErrno(env, "read(uffd)");
  }
  size_t cnt = static_cast<size_t>(n) / sizeof(uffd_msg);
  for (size_t i = 0; i < cnt; i++) {
    const uffd_msg& m = msgs[i];
    Napi::Object e = Napi::Object::New(env);
    switch (m.event) {
      case UFFD_EVENT_PAGEFAULT:
        e.Set("type", "pagefault");
        e.Set("address", FromU64(env, m.arg.pagefault.address));
        // flags: UFFD_PAGEFAULT_FLAG_WRITE (1), _WP (2), _MINOR (4)
        e.Set("flags", FromU64(env, m.arg.pagefault.flags));
        break;
      case UFFD_EVENT_REMOVE:
        e.Set("type", "remove");
        e.Set("start", FromU64(env, m.arg.remove.start));
        e.Set("end", FromU64(env, m.arg.remove.end));
        break;
      case UFFD_EVENT_UNMAP:
        e.Set("type", "unmap");
        e.Set("start", FromU64(env, m.arg.remove.start));
        e.Set("end", FromU64(env, m.arg.remove.end));
        break;
      default:
        e.Set("type", "other");
        e.Set("event", Napi::Number::New(env, m.event));
        break;
    }
    out.Set(static_cast<uint32_t>(i), e);
  }
  return out;
}

}  // namespace

void InitUffd(Napi::Env env, Napi::Object exports) {
  exports.Set("uffdCreate", Napi::Function::New(env, UffdCreate, "uffdCreate"));
  exports.Set("uffdApiHandshake", Napi::Function::New(env, UffdApiHandshake, "uffdApiHandshake"));
  exports.Set("uffdRegister", Napi::Function::New(env, UffdRegister, "uffdRegister"));
  exports.Set("uffdUnregister", Napi::Function::New(env, UffdUnregister, "uffdUnregister"));
  exports.Set("uffdCopy", Napi::Function::New(env, UffdCopy, "uffdCopy"));
  exports.Set("uffdZeropage", Napi::Function::New(env, UffdZeropage, "uffdZeropage"));
  exports.Set("uffdWake", Napi::Function::New(env, UffdWake, "uffdWake"));
  exports.Set("uffdReadEvents", Napi::Function::New(env, UffdReadEvents, "uffdReadEvents"));
}

}  // namespace shoal
