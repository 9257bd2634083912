// The PostgreSQL schema of the vector and job stores, as versioned migrations embedded
// in the binary: SchemaMigrations()[v - 1] takes a database from version v - 1 to v,
// and the current version is their count. Migrations only add (expand/contract): a
// rolling update runs the old and the new binary side by side on one database, so a
// migration must leave the schema usable by the previous version; a later one drops
// what no running version reads any more.
// Thread-safety: immutable data.
#ifndef STEERD_SERVER_STORAGE_POSTGRES_SCHEMA_H_
#define STEERD_SERVER_STORAGE_POSTGRES_SCHEMA_H_

#include "absl/types/span.h"

namespace steerd {
namespace postgres {

absl::Span<const char* const> SchemaMigrations();

}  // namespace postgres
}  // namespace steerd

#endif  // STEERD_SERVER_STORAGE_POSTGRES_SCHEMA_H_
