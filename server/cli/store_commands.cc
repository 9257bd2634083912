// `steerd migrate` and the store flags (store_flags.h).
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "server/cli/commands.h"
#include "server/cli/store_flags.h"
#include "server/storage/postgres.h"
#include "server/util/status_macros.h"

namespace steerd {

std::string StoreUrlFromFlags(const ParsedFlags& args) {
  if (args.Has("store")) return args.Get("store", "");
  const char* env = std::getenv("STEERD_STORE");
  return env == nullptr ? "" : env;
}

std::string ReplicaIdFromFlags(const ParsedFlags& args) {
  if (args.Has("replica-id")) return args.Get("replica-id", "");
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  return absl::StrCat(host[0] == '\0' ? "steerd" : host, ":", getpid());
}

absl::Status RunMigrateCommand(const ParsedFlags& args) {
  const std::string url = StoreUrlFromFlags(args);
  if (url.empty()) {
    return absl::InvalidArgumentError(
        "--store URL (or the STEERD_STORE environment variable) is required: the "
        "PostgreSQL database to migrate");
  }
  ASSIGN_OR_RETURN(const int64_t found,
                   postgres::Migrate(url, absl::StrCat("steerd migrate (", ReplicaIdFromFlags(args),
                                                       ")")));
  const int64_t current = postgres::Database::SchemaVersion();
  if (found == current) {
    std::printf("%s: schema already at version %lld\n", postgres::RedactUrl(url).c_str(),
                static_cast<long long>(current));
  } else {
    std::printf("%s: schema migrated from version %lld to %lld\n",
                postgres::RedactUrl(url).c_str(), static_cast<long long>(found),
                static_cast<long long>(current));
  }
  return absl::OkStatus();
}

}  // namespace steerd
