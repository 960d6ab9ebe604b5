// What every shim function of csrc/ shares: C++ exceptions come back over the C ABI as messages
// allocated with malloc (the caller frees them), or NULL on success.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace rlhf {

inline char* message(const std::string& text) {
  char* copy = static_cast<char*>(std::malloc(text.size() + 1));
  if (copy != nullptr) std::memcpy(copy, text.c_str(), text.size() + 1);
  return copy;
}

// Runs `body`, turning any exception into its message.
template <typename F>
char* guarded(F body) {
  try {
    body();
    return nullptr;
  } catch (const std::exception& error) {
    return message(error.what());
  } catch (...) {
    return message("unknown C++ exception");
  }
}

}  // namespace rlhf
