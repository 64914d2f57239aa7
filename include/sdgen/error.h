#pragma once

#include <stdexcept>
#include <string>

namespace sdgen {

// The one exception type the library throws. Messages carry their context
// (file, key, expected vs found) so that `main` can print them as one line.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace sdgen
