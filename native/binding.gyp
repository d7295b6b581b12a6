# shoal_native: built with `npm run build:native` (node-gyp rebuild in native/).
# N-API only (NAPI_VERSION 8, node-addon-api headers), so the same .node loads
# in Node 18 (guest) and Node 20 (host).
{
  "targets": [
    {
      "target_name": "shoal_native",
      "sources": [
        "src/addon.cc",
        "src/sock.cc",
        "src/bridge.cc",
        "src/uffd.cc",
        "src/pageserver.cc",
        "src/guest.cc",
        "src/testing.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "-Wno-unused-parameter"],
      "ldflags": ["-pthread"]
    }
  ]
}
