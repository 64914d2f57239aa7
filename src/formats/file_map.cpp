#include "formats/file_map.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sdgen/error.h"

namespace sdgen {

FileMap map_file_read_only(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused
  // as not a regular file); no effect on regular files.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  FileMap map;
  map.size = static_cast<uint64_t>(st.st_size);
  if (map.size > 0) {
    void* p = ::mmap(nullptr, map.size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;  // before close() can change it
      ::close(fd);
      throw Error(path + ": mmap failed: " + std::strerror(err));
    }
    map.data = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return map;
}

void unmap_file(const FileMap& map) {
  if (map.data != nullptr) ::munmap(const_cast<uint8_t*>(map.data), map.size);
}

}  // namespace sdgen
