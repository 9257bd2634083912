// The store flags `steerd serve` and `steerd migrate` share, read one way: --store URL,
// else the STEERD_STORE environment variable (so a Kubernetes Secret can hold the
// password without it showing in the pod's command line), else none (SQLite in
// --data-dir); and --replica-id, else hostname:pid.
// Thread-safety: reads the environment; call from the main thread.
#ifndef STEERD_SERVER_CLI_STORE_FLAGS_H_
#define STEERD_SERVER_CLI_STORE_FLAGS_H_

#include <string>

#include "server/util/flags.h"

namespace steerd {

// The store URL the flags and environment name; empty for SQLite.
std::string StoreUrlFromFlags(const ParsedFlags& args);
// --replica-id, else "<hostname>:<pid>".
std::string ReplicaIdFromFlags(const ParsedFlags& args);

}  // namespace steerd

#endif  // STEERD_SERVER_CLI_STORE_FLAGS_H_
