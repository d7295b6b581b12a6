// Test-only helpers, exported as `testing.*` so nobody mistakes them for API.
//
// The userfaultfd tests need to play Firecracker's side from Node: map
// anonymous memory, register it, and then *touch* it so the kernel raises
// page faults. JS cannot dereference raw addresses, hence memRead/memWrite.
// Touching a registered-but-missing page blocks the calling thread until a
// page server resolves the fault, so only call these where a server runs.
#include "common.h"

#include <sys/mman.h>

namespace shoal {
namespace {

// mmapAnon(len): addr. Private anonymous RW memory, like Firecracker's guest RAM.
Napi::Value MmapAnon(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t len = ArgU64(info, 0, "len");
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) ThrowErrno(env, "mmap");
  return FromU64(env, reinterpret_cast<uint64_t>(p));
}

Napi::Value Munmap(const Napi::CallbackInfo& info) {
  if (munmap(reinterpret_cast<void*>(ArgU64(info, 0, "addr")), ArgU64(info, 1, "len")) < 0)
    ThrowErrno(info.Env(), "munmap");
  return info.Env().Undefined();
}

// madviseDontneed(addr, len): what Firecracker's balloon does to reclaimed
// guest pages; on a uffd-registered range with UFFD_FEATURE_EVENT_REMOVE this
// queues UFFD_EVENT_REMOVE and blocks until the handler has read it.
Napi::Value MadviseDontneed(const Napi::CallbackInfo& info) {
  if (madvise(reinterpret_cast<void*>(ArgU64(info, 0, "addr")), ArgU64(info, 1, "len"), MADV_DONTNEED) < 0)
    ThrowErrno(info.Env(), "madvise(MADV_DONTNEED)");
  return info.Env().Undefined();
}

// memRead(addr, len): Buffer copy of process memory (faults pages in).
Napi::Value MemRead(const Napi::CallbackInfo& info) {
  uint64_t addr = ArgU64(info, 0, "addr");
  uint64_t len = ArgU64(info, 1, "len");
  return Napi::Buffer<uint8_t>::Copy(info.Env(), reinterpret_cast<const uint8_t*>(addr), len);
}

// memWrite(addr, data: Buffer)
Napi::Value MemWrite(const Napi::CallbackInfo& info) {
  uint64_t addr = ArgU64(info, 0, "addr");
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(info.Env(), "data must be a Buffer");
  Napi::Buffer<uint8_t> b = info[1].As<Napi::Buffer<uint8_t>>();
  memcpy(reinterpret_cast<void*>(addr), b.Data(), b.Length());
  return info.Env().Undefined();
}

}  // namespace

void InitTesting(Napi::Env env, Napi::Object exports) {
  Napi::Object t = Napi::Object::New(env);
  t.Set("mmapAnon", Napi::Function::New(env, MmapAnon, "mmapAnon"));
  t.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  t.Set("madviseDontneed", Napi::Function::New(env, MadviseDontneed, "madviseDontneed"));
  t.Set("memRead", Napi::Function::New(env, MemRead, "memRead"));
  t.Set("memWrite", Napi::Function::New(env, MemWrite, "memWrite"));
  exports.Set("testing", t);
}

}  // namespace shoal
