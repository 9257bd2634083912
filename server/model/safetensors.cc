#include "server/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "server/util/status_macros.h"

namespace steerd {
namespace {

// The reference implementation's limit: a larger header is a hostile or broken file,
// and refusing it early keeps a bogus length from driving a huge JSON parse.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kLengthPrefixBytes = 8;
constexpr char kMetadataKey[] = "__metadata__";

struct DTypeInfo {
  DType dtype;
  absl::string_view name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF64, "F64", 8},   {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

// The table is indexed by the enum value; this keeps the two in step.
constexpr bool TableMatchesEnum() {
  for (size_t i = 0; i < std::size(kDTypes); ++i) {
    if (static_cast<size_t>(kDTypes[i].dtype) != i) return false;
  }
  return std::size(kDTypes) == static_cast<size_t>(DType::kBool) + 1;
}
static_assert(TableMatchesEnum(), "kDTypes must list every DType in enum order");

const DTypeInfo& Info(DType dtype) { return kDTypes[static_cast<size_t>(dtype)]; }

uint64_t DecodeLittleEndian64(const uint8_t* bytes) {
  uint64_t value = 0;
  for (size_t i = kLengthPrefixBytes; i-- > 0;) value = (value << 8) | bytes[i];
  return value;
}

std::string EncodeLittleEndian64(uint64_t value) {
  std::string bytes(kLengthPrefixBytes, '\0');
  for (size_t i = 0; i < kLengthPrefixBytes; ++i) {
    bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  }
  return bytes;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Multiplies the dims and the element size, failing instead of wrapping around so a
// hostile shape cannot make a small byte range look like a big tensor.
bool ByteCount(const std::vector<int64_t>& shape, size_t element_size, uint64_t* nbytes) {
  uint64_t n = 1;
  for (int64_t dim : shape) {
    if (dim < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(dim), &n)) return false;
  }
  // TensorView::numel() returns int64_t.
  if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  return !__builtin_mul_overflow(n, static_cast<uint64_t>(element_size), nbytes);
}

absl::Status TensorError(absl::string_view source, absl::string_view name,
                         absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": tensor '", name, "': ", message));
}

// A validated header entry plus its byte range inside the data section.
struct ParsedEntry {
  TensorView view;
  uint64_t begin = 0;
  uint64_t end = 0;
};

absl::StatusOr<ParsedEntry> ParseTensorEntry(absl::string_view source, const std::string& name,
                                             const nlohmann::json& entry, const uint8_t* data,
                                             uint64_t data_size) {
  if (!entry.is_object()) {
    return TensorError(source, name, "header entry must be an object");
  }
  ParsedEntry parsed;
  TensorView& view = parsed.view;
  view.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return TensorError(source, name, "'dtype' must be a string");
  }
  absl::StatusOr<DType> dtype = ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype.ok()) return TensorError(source, name, dtype.status().message());
  view.dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return TensorError(source, name, "'shape' must be an array of integers");
  }
  for (const nlohmann::json& dim : *shape_it) {
    if (!dim.is_number_integer()) {
      return TensorError(source, name, "'shape' must be an array of integers");
    }
    if (dim.is_number_unsigned()) {
      const uint64_t value = dim.get<uint64_t>();
      if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return TensorError(source, name, absl::StrCat("dimension ", value, " is too large"));
      }
      view.shape.push_back(static_cast<int64_t>(value));
    } else {
      const int64_t value = dim.get<int64_t>();
      if (value < 0) {
        return TensorError(source, name, absl::StrCat("dimension ", value, " is negative"));
      }
      view.shape.push_back(value);
    }
  }
  uint64_t nbytes = 0;
  if (!ByteCount(view.shape, DTypeSize(view.dtype), &nbytes)) {
    return TensorError(source, name, absl::StrCat("shape ", ShapeString(view.shape), " overflows"));
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    return TensorError(source, name,
                       "'data_offsets' must be [begin, end] with non-negative integers");
  }
  parsed.begin = (*offsets_it)[0].get<uint64_t>();
  parsed.end = (*offsets_it)[1].get<uint64_t>();
  if (parsed.begin > parsed.end) {
    return TensorError(
        source, name,
        absl::StrCat("data_offsets [", parsed.begin, ", ", parsed.end, "] end before they begin"));
  }
  if (parsed.end - parsed.begin != nbytes) {
    return TensorError(source, name,
                       absl::StrCat("data_offsets [", parsed.begin, ", ", parsed.end, "] hold ",
                                    parsed.end - parsed.begin, " bytes but ", DTypeName(view.dtype),
                                    " ", ShapeString(view.shape), " needs ", nbytes));
  }
  if (parsed.end > data_size) {
    return absl::DataLossError(absl::StrCat(
        source, ": tensor '", name, "': data_offsets [", parsed.begin, ", ", parsed.end,
        "] run past the end of the data section (", data_size, " bytes); the file is truncated"));
  }
  view.data = data + parsed.begin;
  view.nbytes = static_cast<size_t>(nbytes);
  return parsed;
}

absl::StatusOr<std::map<std::string, std::string>> ParseMetadata(absl::string_view source,
                                                                 const nlohmann::json& value) {
  std::map<std::string, std::string> metadata;
  // The reference implementation reads a null "__metadata__" as absent.
  if (value.is_null()) return metadata;
  if (!value.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": \"", kMetadataKey, "\" must be an object of strings, not ", value.type_name()));
  }
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": \"", kMetadataKey, "\" value for '",
                                                     it.key(), "' must be a string, not ",
                                                     it->type_name()));
    }
    metadata[it.key()] = it->get<std::string>();
  }
  return metadata;
}

// The header and the data pieces of a file to write, in file order. Writing the pieces
// straight from the callers' buffers avoids a second copy of a whole model.
struct Layout {
  std::string prefix_and_header;
  std::vector<std::pair<const char*, size_t>> chunks;
  uint64_t total_size = 0;
};

absl::StatusOr<Layout> MakeLayout(const std::vector<TensorToWrite>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> sorted;
  sorted.reserve(tensors.size());
  for (const TensorToWrite& tensor : tensors) sorted.push_back(&tensor);
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorToWrite* a, const TensorToWrite* b) { return a->name < b->name; });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  // Readers that stream the header (and humans) expect the metadata first.
  if (!metadata.empty()) header[kMetadataKey] = metadata;

  Layout layout;
  uint64_t offset = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const TensorToWrite& tensor = *sorted[i];
    if (tensor.name == kMetadataKey) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name '", kMetadataKey, "' is reserved"));
    }
    if (i > 0 && sorted[i - 1]->name == tensor.name) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' is given twice"));
    }
    uint64_t nbytes = 0;
    if (!ByteCount(tensor.shape, DTypeSize(tensor.dtype), &nbytes)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "': shape ",
                                                     ShapeString(tensor.shape),
                                                     " has a negative dimension or overflows"));
    }
    if (nbytes > 0 && tensor.data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", tensor.name, "': data is null but ", nbytes, " bytes are needed"));
    }
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = std::string(DTypeName(tensor.dtype));
    entry["shape"] = tensor.shape;
    entry["data_offsets"] = nlohmann::ordered_json::array({offset, offset + nbytes});
    header[tensor.name] = std::move(entry);
    if (nbytes > 0) {
      layout.chunks.emplace_back(static_cast<const char*>(tensor.data),
                                 static_cast<size_t>(nbytes));
    }
    offset += nbytes;
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor names and metadata must be valid UTF-8: ", e.what()));
  }
  // Padding keeps the data section 8-byte aligned in a mapped file.
  text.append((kLengthPrefixBytes - text.size() % kLengthPrefixBytes) % kLengthPrefixBytes, ' ');
  layout.prefix_and_header = EncodeLittleEndian64(text.size()) + text;
  layout.total_size = layout.prefix_and_header.size() + offset;
  return layout;
}

// Closes a descriptor on every path out of a function.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  // Closes now so the caller sees the error (close can report a failed write-back).
  int Close() {
    const int result = ::close(fd_);
    fd_ = -1;
    return result;
  }

 private:
  int fd_;
};

absl::Status WriteAll(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    const ssize_t written = ::write(fd, data, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat(path, ": write failed"));
    }
    data += written;
    size -= static_cast<size_t>(written);
  }
  return absl::OkStatus();
}

absl::Status WriteAndSync(int fd, const Layout& layout, const std::string& path) {
  RETURN_IF_ERROR(
      WriteAll(fd, layout.prefix_and_header.data(), layout.prefix_and_header.size(), path));
  for (const auto& [data, size] : layout.chunks) {
    RETURN_IF_ERROR(WriteAll(fd, data, size, path));
  }
  if (::fsync(fd) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": fsync failed"));
  }
  return absl::OkStatus();
}

// Creates a fresh file beside `path`. The name carries the process id and a counter so
// concurrent writers never share one; O_EXCL skips a leftover from a crashed process.
absl::StatusOr<std::pair<std::string, int>> CreateTempFile(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  constexpr int kAttempts = 100;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    std::string temp_path = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
    // Mode 0666 lets the umask decide the final permissions, as for any new file.
    const int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return std::make_pair(std::move(temp_path), fd);
    if (errno != EEXIST) {
      return absl::ErrnoToStatus(errno, absl::StrCat(temp_path, ": cannot create"));
    }
  }
  return absl::AlreadyExistsError(
      absl::StrCat(path, ": could not pick an unused temporary file name"));
}

absl::Status SyncDirectory(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  ScopedFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(dir, ": cannot open directory"));
  }
  if (::fsync(fd.get()) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(dir, ": fsync failed"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view DTypeName(DType dtype) { return Info(dtype).name; }

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "'"));
}

size_t DTypeSize(DType dtype) { return Info(dtype).size; }

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->source_ = path;
  file->size_ = static_cast<size_t>(st.st_size);
  // mmap rejects a zero length; ParseHeader reports the short file instead.
  if (file->size_ > 0) {
    void* mapping = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (mapping == MAP_FAILED) {
      return absl::ErrnoToStatus(errno, absl::StrCat(path, ": mmap failed"));
    }
    file->mapping_ = mapping;
    file->mapping_size_ = file->size_;
    file->bytes_ = static_cast<const uint8_t*>(mapping);
    // Weights are read in full right after opening; start the read-ahead now. A
    // failure only loses the hint.
    ::madvise(mapping, file->mapping_size_, MADV_WILLNEED);
  }
  RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBuffer(std::string bytes,
                                                                             std::string source) {
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->source_ = std::move(source);
  file->owned_bytes_ = std::move(bytes);
  // The object lives on the heap and owned_bytes_ never changes again, so this pointer
  // stays valid; heap strings are allocated at least 8-byte aligned.
  file->bytes_ = reinterpret_cast<const uint8_t*>(file->owned_bytes_.data());
  file->size_ = file->owned_bytes_.size();
  RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

absl::StatusOr<TensorView> SafetensorsFile::Get(absl::string_view name) const {
  auto it = tensors_.find(std::string(name));
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(source_, ": no tensor named '", name, "'"));
  }
  return it->second;
}

absl::Status SafetensorsFile::ParseHeader() {
  if (size_ < kLengthPrefixBytes) {
    return absl::DataLossError(
        absl::StrCat(source_, ": file has ", size_, " bytes, fewer than the 8-byte header length"));
  }
  const uint64_t header_size = DecodeLittleEndian64(bytes_);
  if (header_size > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": header length ", header_size,
                                                   " exceeds the limit of ", kMaxHeaderBytes,
                                                   " bytes"));
  }
  const uint64_t after_prefix = size_ - kLengthPrefixBytes;
  if (header_size > after_prefix) {
    return absl::DataLossError(absl::StrCat(source_, ": header length ", header_size,
                                            " runs past the end of the file (", size_,
                                            " bytes); the file is truncated"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes_ + kLengthPrefixBytes);
  // nlohmann stops at a NUL byte and would ignore whatever follows it; JSON text never
  // holds a raw NUL, so one means a corrupt (or NUL-padded, non-standard) header.
  if (const void* nul = std::memchr(header_begin, '\0', header_size); nul != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": header is not valid JSON: NUL byte at offset ",
                     static_cast<const char*>(nul) - header_begin));
  }
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_begin, header_begin + header_size);
  } catch (const nlohmann::json::exception& e) {
    // Not only parse_error: a number too large for a double (1e999) is out_of_range.
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": header must be a JSON object, not ", header.type_name()));
  }

  const uint8_t* data = bytes_ + kLengthPrefixBytes + header_size;
  const uint64_t data_size = after_prefix - header_size;
  std::vector<ParsedEntry> entries;
  entries.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == kMetadataKey) {
      ASSIGN_OR_RETURN(metadata_, ParseMetadata(source_, it.value()));
      continue;
    }
    ASSIGN_OR_RETURN(ParsedEntry entry,
                     ParseTensorEntry(source_, it.key(), it.value(), data, data_size));
    entries.push_back(std::move(entry));
  }

  // Two views of one byte range would let a write through one (e.g. a tensor made
  // writable by a copy-on-write mapping) silently change the other. Empty tensors
  // occupy no bytes, so they can sit anywhere.
  std::vector<const ParsedEntry*> by_offset;
  for (const ParsedEntry& entry : entries) {
    if (entry.end > entry.begin) by_offset.push_back(&entry);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const ParsedEntry* a, const ParsedEntry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const ParsedEntry& previous = *by_offset[i - 1];
    const ParsedEntry& current = *by_offset[i];
    if (current.begin < previous.end) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_, ": tensor '", current.view.name, "' data [", current.begin, ", ",
                       current.end, ") overlaps tensor '", previous.view.name, "' [",
                       previous.begin, ", ", previous.end, ")"));
    }
  }

  for (ParsedEntry& entry : entries) {
    std::string name = entry.view.name;
    tensors_.emplace(std::move(name), std::move(entry.view));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<TensorToWrite>& tensors, const std::map<std::string, std::string>& metadata) {
  ASSIGN_OR_RETURN(const Layout layout, MakeLayout(tensors, metadata));
  std::string out;
  out.reserve(layout.total_size);
  out += layout.prefix_and_header;
  for (const auto& [data, size] : layout.chunks) out.append(data, size);
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  absl::StatusOr<Layout> layout = MakeLayout(tensors, metadata);
  if (!layout.ok()) {
    return absl::Status(layout.status().code(),
                        absl::StrCat(path, ": ", layout.status().message()));
  }
  ASSIGN_OR_RETURN(auto temp, CreateTempFile(path));
  const std::string& temp_path = temp.first;
  ScopedFd fd(temp.second);
  absl::Status status = WriteAndSync(fd.get(), *layout, temp_path);
  if (status.ok() && fd.Close() != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat(temp_path, ": close failed"));
  }
  if (status.ok() && ::rename(temp_path.c_str(), path.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot rename ", temp_path));
  }
  if (!status.ok()) {
    ::unlink(temp_path.c_str());
    return status;
  }
  // The rename is durable only once the directory entry is on disk.
  return SyncDirectory(path);
}

}  // namespace steerd
