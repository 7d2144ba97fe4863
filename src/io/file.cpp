#include "kosmosg/io/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "kosmosg/error.h"

namespace kosmosg::io {

int open_regular_file(const std::string& path, const std::string& op, uint64_t& size) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) fail(op, path + ": cannot open: no such file");
    fail(op, path + ": cannot be opened for reading: " + std::strerror(err));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(op, path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(op, path + (S_ISDIR(st.st_mode) ? ": is a folder, expected a file"
                                         : ": is not a regular file (a device, FIFO or socket), expected a file"));
  }
  // Reads of a regular file never block; clearing the flag keeps later reads ordinary.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  size = static_cast<uint64_t>(st.st_size);
  return fd;
}

void require_regular_file(const std::string& path, const std::string& op) {
  uint64_t size = 0;
  ::close(open_regular_file(path, op, size));
}

std::string read_file(const std::string& path, const std::string& op, uint64_t max_bytes) {
  uint64_t size = 0;
  const int fd = open_regular_file(path, op, size);
  if (size > max_bytes) {
    ::close(fd);
    fail(op, path + ": is " + std::to_string(size) + " bytes, larger than the " + std::to_string(max_bytes) +
                 " bytes accepted for this kind of file");
  }
  std::string data(static_cast<size_t>(size), '\0');
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::read(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      fail(op, path + (n == 0 ? ": shrank while it was read" : ": read error: " + std::string(std::strerror(err))));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return data;
}

}  // namespace kosmosg::io
