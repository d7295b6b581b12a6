// Shared helpers for the shoal native addon.
//
// Conventions used by every exported function:
//  * fds are plain ints owned by the caller unless the function says it takes
//    ownership (bridge, page server). Every fd we create is O_CLOEXEC so it does
//    not leak into the VMM / podman / child processes Node spawns.
//  * Sockets we create are O_NONBLOCK. "Would block" is reported as `null`
//    (never thrown) so the TS wrapper can await readiness with waitFd() and retry;
//    nothing here ever blocks the JS thread or parks a libuv threadpool thread.
//  * Real errors are thrown as Error objects with Node-style `code` ("EAGAIN"),
//    `errno` (positive number) and `syscall` properties.
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace shoal {

// Build a Node-style system error (code/errno/syscall) for the current errno.
Napi::Error ErrnoError(Napi::Env env, const char* syscall, int err = errno);

// Throw helper: `throw ErrnoError(...)` reads better at call sites.
[[noreturn]] void ThrowErrno(Napi::Env env, const char* syscall, int err = errno);

// Argument helpers; they throw TypeError on bad input.
int ArgFd(const Napi::CallbackInfo& info, size_t i, const char* name);
uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name);
// Addresses and sizes: accept a Number (safe integer) or a BigInt.
uint64_t ToU64(Napi::Env env, Napi::Value v, const char* name);
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name);
// Addresses are returned as Number: x86_64 user addresses are < 2^47 (2^56 with
// LA57 only if explicitly requested), so they are exact in a double.
Napi::Value FromU64(Napi::Env env, uint64_t v);

// Mark an fd non-blocking / close-on-exec.
bool SetNonBlocking(int fd, bool on);

// Module parts, each registers its exports.
void InitFd(Napi::Env env, Napi::Object exports);
void InitSock(Napi::Env env, Napi::Object exports);
void InitBridge(Napi::Env env, Napi::Object exports);
void InitUffd(Napi::Env env, Napi::Object exports);
void InitPageServer(Napi::Env env, Napi::Object exports);
void InitGuest(Napi::Env env, Napi::Object exports);
void InitTesting(Napi::Env env, Napi::Object exports);

}  // namespace shoal
