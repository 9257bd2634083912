#include "server/storage/postgres_schema.h"

namespace steerd {
namespace postgres {
namespace {

constexpr const char* kMigrations[] = {
    // Version 1.
    // Names, ids and tenants compare bytewise (COLLATE "C"), as the SQLite stores do,
    // so listings page in the same order whatever the database's locale.
    // vector_names: one row per (tenant, name) ever created, never deleted, so a version
    //   number is never reused even after every version of a name was deleted.
    // vectors: the metadata; vectors_listing is the listing order within a tenant and
    //   serves "latest of a name"; vectors_one_per_job makes a training job's publish
    //   exactly-once (a second publish of the same job is a unique violation).
    // vector_files: the safetensors bytes, apart so that listing never reads them;
    //   stored uncompressed (float data does not compress; EXTERNAL skips the attempt).
    // vector_changes: the change feed, one row per created or deleted version, written
    //   in the same transaction as the change; replicas read it by seq.
    // job_examples: the texts as bytes, since PostgreSQL's text cannot hold every
    //   string a dataset may (a NUL character, say) and the store gives back exactly
    //   what it was given.
    // jobs: as the SQLite store's, plus the model (what claims filter by), the lease
    //   (owner, epoch, expiry by the database's clock), the attempts used and the
    //   cancel request, which any replica may set while another holds the lease.
    R"sql(
      CREATE TABLE vector_names (
        tenant text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        last_version bigint NOT NULL,
        PRIMARY KEY (tenant, name)
      );
      CREATE TABLE vectors (
        id bigserial PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        version bigint NOT NULL CHECK (version >= 1),
        model text NOT NULL,
        model_fingerprint text NOT NULL,
        num_layers integer NOT NULL,
        hidden_size integer NOT NULL,
        dtype text NOT NULL,
        sha256 text NOT NULL,
        size_bytes bigint NOT NULL,
        layer_norms bytea NOT NULL,
        create_time_us bigint NOT NULL,
        source text NOT NULL CHECK (source IN ('upload', 'training')),
        job_id text COLLATE "C" NOT NULL,
        description text NOT NULL
      );
      CREATE UNIQUE INDEX vectors_listing ON vectors (tenant, name, version DESC);
      CREATE UNIQUE INDEX vectors_one_per_job ON vectors (job_id) WHERE job_id <> '';
      CREATE TABLE vector_files (
        vector_id bigint PRIMARY KEY REFERENCES vectors (id) ON DELETE CASCADE,
        safetensors bytea NOT NULL
      );
      ALTER TABLE vector_files ALTER COLUMN safetensors SET STORAGE EXTERNAL;
      CREATE TABLE vector_changes (
        seq bigserial PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        version bigint NOT NULL,
        op text NOT NULL CHECK (op IN ('create', 'delete')),
        time_us bigint NOT NULL
      );
      CREATE TABLE jobs (
        id text COLLATE "C" PRIMARY KEY,
        tenant text COLLATE "C" NOT NULL,
        create_time_us bigint NOT NULL,
        state text NOT NULL
          CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
        step integer NOT NULL,
        metrics text,
        error text NOT NULL,
        vector_version bigint NOT NULL,
        start_time_us bigint,
        end_time_us bigint,
        spec text NOT NULL,
        model text COLLATE "C" NOT NULL,
        lease_owner text,
        lease_epoch bigint NOT NULL DEFAULT 0,
        lease_until timestamptz,
        attempts integer NOT NULL DEFAULT 0,
        cancel_requested boolean NOT NULL DEFAULT false
      );
      CREATE INDEX jobs_listing ON jobs (tenant, create_time_us DESC, id DESC);
      CREATE INDEX jobs_unfinished ON jobs (model, create_time_us, id)
        WHERE state IN ('QUEUED', 'RUNNING');
      CREATE TABLE job_examples (
        job_id text COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        dataset text NOT NULL CHECK (dataset IN ('train', 'eval')),
        position integer NOT NULL,
        prompt bytea NOT NULL,
        answer bytea NOT NULL,
        solution bytea NOT NULL,
        PRIMARY KEY (job_id, dataset, position)
      );
      CREATE TABLE job_checkpoints (
        job_id text COLLATE "C" PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
        step integer NOT NULL,
        metrics text,
        bytes bytea NOT NULL
      );
    )sql",
};

}  // namespace

absl::Span<const char* const> SchemaMigrations() { return kMigrations; }

}  // namespace postgres
}  // namespace steerd
