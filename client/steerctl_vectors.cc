// steerctl vectors create|get|list|export|delete: a tenant's steering vectors.
#include "client/steerctl_common.h"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/job_progress.h"
#include "client/steerd_client.h"
#include "server/util/status_macros.h"

namespace steerd::client::steerctl {

namespace {

namespace v1 = ::steerd::v1;

absl::Status WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

std::string HumanBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, "B");
  if (bytes < (int64_t{1} << 20)) return absl::StrFormat("%.1fKiB", bytes / 1024.0);
  return absl::StrFormat("%.1fMiB", bytes / (1024.0 * 1024.0));
}

std::vector<std::string> VectorHeader() {
  return {"VECTOR", "MODEL",   "SHAPE",  "DTYPE",      "SIZE",
          "SOURCE", "CREATED", "SHA256", "DESCRIPTION"};
}

std::vector<std::string> VectorRow(const v1::Vector& vector) {
  std::string source = "-";
  if (vector.source() == v1::Vector::SOURCE_UPLOAD) source = "upload";
  if (vector.source() == v1::Vector::SOURCE_TRAINING)
    source = absl::StrCat("job:", vector.job_id());
  return {absl::StrCat(vector.name(), "@", vector.version()),
          OrDash(vector.model()),
          absl::StrCat(vector.num_layers(), "x", vector.hidden_size()),
          OrDash(vector.dtype()),
          HumanBytes(vector.size_bytes()),
          source,
          FormatTimestamp(vector.create_time()),
          OrDash(vector.sha256().substr(0, 12)),
          OneLine(vector.description())};
}

void PrintVectors(const std::vector<v1::Vector>& vectors, std::ostream& out) {
  std::vector<std::vector<std::string>> rows = {VectorHeader()};
  for (const v1::Vector& vector : vectors) rows.push_back(VectorRow(vector));
  PrintTable(rows, out);
}

}  // namespace

absl::Status RunVectorsCreate(const Command& c) {
  ASSIGN_OR_RETURN(std::string model, AsUsage(c.flags.Required("model")));
  ASSIGN_OR_RETURN(std::string name, AsUsage(c.flags.Required("name")));
  ASSIGN_OR_RETURN(std::string file, AsUsage(c.flags.Required("file")));
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(file));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  ASSIGN_OR_RETURN(v1::Vector vector, client->CreateVector(model, name, std::move(bytes),
                                                           c.flags.Get("description")));
  if (c.flags.Bool("json")) return PrintJson(vector, c.out);
  PrintVectors({vector}, c.out);
  return absl::OkStatus();
}

absl::Status RunVectorsGet(const Command& c) {
  const std::string& ref = c.flags.positional()[0];
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  ASSIGN_OR_RETURN(v1::Vector vector, client->GetVector(ref));
  if (c.flags.Bool("json")) return PrintJson(vector, c.out);
  PrintVectors({vector}, c.out);
  return absl::OkStatus();
}

absl::Status RunVectorsList(const Command& c) {
  VectorFilter filter;
  filter.model = c.flags.Get("model");
  filter.name = c.flags.Get("name");
  filter.all_versions = c.flags.Bool("all-versions");
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  ASSIGN_OR_RETURN(std::vector<v1::Vector> vectors, client->ListVectors(filter));
  if (c.flags.Bool("json")) {
    v1::ListVectorsResponse response;
    for (v1::Vector& vector : vectors) *response.add_vectors() = std::move(vector);
    return PrintJson(response, c.out);
  }
  if (vectors.empty()) {
    c.err << "no vectors\n";
    return absl::OkStatus();
  }
  PrintVectors(vectors, c.out);
  return absl::OkStatus();
}

absl::Status RunVectorsExport(const Command& c) {
  const std::string& ref = c.flags.positional()[0];
  ASSIGN_OR_RETURN(std::string path, AsUsage(c.flags.Required("out")));
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  ASSIGN_OR_RETURN(v1::ExportVectorResponse response, client->ExportVector(ref));
  RETURN_IF_ERROR(WriteFile(path, response.safetensors()));
  // The JSON is the metadata: the file itself went to --out.
  if (c.flags.Bool("json")) return PrintJson(response.vector(), c.out);
  c.out << "wrote " << response.vector().name() << "@" << response.vector().version()
        << " (" << response.safetensors().size() << " bytes, sha256 "
        << OrDash(response.vector().sha256()) << ") to " << path << "\n";
  return absl::OkStatus();
}

absl::Status RunVectorsDelete(const Command& c) {
  const std::string& ref = c.flags.positional()[0];
  ASSIGN_OR_RETURN(std::unique_ptr<SteerdClient> client, Connect(c.flags));
  ASSIGN_OR_RETURN(v1::DeleteVectorResponse response, client->DeleteVector(ref));
  if (c.flags.Bool("json")) return PrintJson(response, c.out);
  for (const v1::VectorRef& deleted : response.deleted()) {
    c.out << "deleted " << FormatVectorRef(deleted) << "\n";
  }
  return absl::OkStatus();
}

}  // namespace steerd::client::steerctl
