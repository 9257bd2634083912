#include "server/cli/command_table.h"

#include <vector>

namespace steerd {

namespace {

FlagDef DtypeFlag() {
  return ValueFlag("dtype", "NAME", "Compute dtype: auto (the checkpoint's), f32, bf16 or f16.",
                   "auto");
}

FlagDef DeviceFlag() { return ValueFlag("device", "NAME", "auto, cpu or cuda.", "auto"); }

FlagDef ThreadsFlag() {
  return ValueFlag("threads", "N",
                   "CPU compute threads; 0 takes OMP_NUM_THREADS when it is set, else every "
                   "core (serve: every core but one, left to gRPC).",
                   "0");
}

// How the model's weights are loaded and run (every command that loads one model).
std::vector<FlagDef> ModelRuntimeFlags() {
  return {
      DtypeFlag(),
      DeviceFlag(),
      ThreadsFlag(),
      ValueFlag("weights", "HOW",
                "CPU weight memory: mapped (the safetensors files, memory-mapped) or "
                "hugepages (copied to anonymous memory on huge pages).",
                "mapped"),
  };
}

// --model DIR and how it runs.
std::vector<FlagDef> ModelFlags() {
  return ConcatFlags({{RequiredFlag("model", "DIR",
                                    "Hugging Face model folder: config.json, safetensors "
                                    "weights, tokenizer.json.")},
                      ModelRuntimeFlags()});
}

std::vector<FlagDef> SteeringFlags() {
  return {
      ValueFlag("steering", "FILE", "A steering vector (safetensors) added to every layer."),
      ValueFlag("scale", "X", "Multiplies the steering vector; needs --steering.",
                "the file's scale, else 1"),
  };
}

// Where examples come from and how answers are scored (train, eval).
std::vector<FlagDef> DataFlags() {
  return {
      ValueFlag("task", "NAME", "A built-in task: arith, arith-words or hops. Or --data."),
      ValueFlag("data", "FILE.jsonl",
                "Examples, one {\"prompt\": ..., \"answer\": ...} a line. Or --task."),
      ValueFlag("data-seed", "N", "Seed of the task's generated examples.", "0"),
      ValueFlag("verifier", "NAME", "How answers are checked: boxed, numeric, exact or regex.",
                "the task's own, else boxed"),
      ValueFlag("regex", "RE",
                "The pattern of --verifier regex; group 1 of its last match is the answer."),
      ValueFlag("correct-reward", "X", "Reward of a correct answer.", "1"),
      ValueFlag("wrong-reward", "X", "Reward of a wrong answer.", "-1"),
      ValueFlag("format-reward", "X", "Reward of an answer in the wrong format.", "0"),
      ValueFlag("max-new-tokens", "N", "Longest completion.", "64"),
  };
}

FlagDef JsonFlag(const char* help) { return BoolFlag("json", help); }

FlagDef StoreFlag(const char* default_text) {
  return ValueFlag("store", "URL",
                   "The vector and job store N replicas share: a PostgreSQL URL "
                   "(postgresql://user:password@host:5432/db). Also read from STEERD_STORE, so "
                   "the password can stay out of the command line.",
                   default_text);
}

CommandDef Migrate() {
  return {
      "steerd migrate",
      {},
      "Bring a PostgreSQL store's schema to this build's version.",
      "For a Kubernetes Job before a rollout; servers also migrate at start-up. Safe while "
      "replicas serve: migrations run under an advisory lock and only add to the schema, "
      "so the previous version keeps working. A schema newer than this build is refused.",
      {StoreFlag("$STEERD_STORE; required"),
       ValueFlag("replica-id", "ID", "Recorded as the migration's author.",
                              "hostname:pid")},
  };
}

CommandDef Serve() {
  return {
      "steerd serve",
      {},
      "Serve the gRPC API (Models, Vectors, Generation, Training, health, reflection).",
      "Serves until SIGTERM or SIGINT, then drains: health NOT_SERVING, no new "
      "generations, in-flight ones finish within --drain-seconds, exit 0.",
      ConcatFlags({
          {RepeatedFlag("model", "NAME=DIR",
                        "A model to serve under NAME (--model DIR: named after the folder). "
                        "Naming any replaces the default.",
                        "the embedded steerd-tiny"),
           ValueFlag("listen", "HOST:PORT",
                     "gRPC address; other than localhost needs --tenants.",
                     "127.0.0.1:50051"),
           ValueFlag("http-listen", "HOST:PORT",
                     "Also serve the OpenAI-compatible HTTP API there (same tenants, "
                     "TLS flags and limits); off by default."),
           ValueFlag("http-threads", "N",
                     "HTTP connections served at once; more wait for a free thread.", "128"),
           ValueFlag("metrics-listen", "HOST:PORT",
                     "Address of the Prometheus GET /metrics endpoint, or off.",
                     "127.0.0.1:9090"),
           ValueFlag("metrics-port", "N", "Same as --metrics-listen 127.0.0.1:N, and wins."),
           ValueFlag("data-dir", "DIR",
                     "Data directory: the default tenant's api_key file, and the vector "
                     "and job store (SQLite) when there is no --store.",
                     "data"),
           StoreFlag("$STEERD_STORE, else SQLite in --data-dir"),
           ValueFlag("replica-id", "ID",
                     "This replica's name in the store: the migrations it applies and the "
                     "training jobs it runs.",
                     "hostname:pid"),
           ValueFlag("tenants", "FILE.json",
                     "Tenants: API key digests and limits. Without it, one default tenant "
                     "whose key is made in --data-dir, on localhost only."),
           ValueFlag("tls-cert", "PEM",
                     "Certificate chain; with --tls-key the server speaks only TLS."),
           ValueFlag("tls-key", "PEM", "Private key of --tls-cert."),
           ValueFlag("drain-seconds", "N",
                     "After SIGTERM or SIGINT, how long in-flight generations may go on.",
                     "30"),
           ValueFlag("max-connection-age", "DURATION",
                     "A client connection older than this (+-10% jitter) gets a GOAWAY: "
                     "its calls go on, new ones reconnect and are balanced anew, so "
                     "clients spread over replicas added since they connected. 500ms, 30s, "
                     "5m, 1h; inf never.",
                     "5m"),
           ValueFlag("max-connection-age-grace", "DURATION",
                     "How long calls may run on a connection past its age before it is "
                     "closed under them (UNAVAILABLE). The default never cuts a "
                     "generation or a job watch, however long; a finite grace must exceed "
                     "the longest one. SIGTERM's drain bounds them either way.",
                     "inf"),
           ValueFlag("max-batch", "N", "Running sequences per model.", "64"),
           ValueFlag("max-waiting", "N",
                     "Queued requests per model before RESOURCE_EXHAUSTED.", "256"),
           ValueFlag("vector-cache-size", "N",
                     "Unused steering vectors kept resident per model.", "256"),
           ValueFlag("max-prompt-tokens", "N",
                     "Longest prompt accepted; 0 is the model's context minus one.", "0"),
           ValueFlag("max-new-tokens", "N",
                     "Cap on a request's new tokens; 0 is the model's context.", "0"),
           ValueFlag("max-message-bytes", "N",
                     "Largest gRPC request or HTTP body; larger ones get RESOURCE_EXHAUSTED "
                     "(HTTP 413).",
                     "16777216"),
           ValueFlag("kv-cache-bytes", "SIZE",
                     "Memory of each model's paged KV cache (bytes, or 512MiB, 4GiB). "
                     "Requests wait when it is full, and running ones are preempted and "
                     "recomputed; the size is printed at start-up.",
                     "--max-batch rows of the whole context, at most a quarter of RAM"),
           ValueFlag("kv-block-size", "N", "Positions per KV cache block.", "16"),
           BoolFlag("no-prefix-cache",
                    "Prefill every prompt whole instead of reusing the cached keys and "
                    "values of an earlier prompt that starts alike."),
           BoolFlag("share-prefixes",
                    "Let unsteered prompts reuse cached prefixes across tenants. Off by "
                    "default: a shared cache tells a tenant, through its time to first "
                    "token, whether another tenant sent the same text.")},
          ModelRuntimeFlags(),
          {ValueFlag("max-training-jobs", "N", "Training jobs running at once per model.",
                     "2"),
           ValueFlag("checkpoint-every", "N", "Steps between a training job's checkpoints.",
                     "5"),
           ValueFlag("training-rows", "N",
                     "Batch rows training rollouts may hold per model.", "32"),
           ValueFlag("min-training-rows", "N",
                     "Rows training keeps while serving is busy, 1 to --training-rows.",
                     "4, at most --training-rows"),
           ValueFlag("job-retention-days", "N",
                     "Days after it ends that a job and its dataset are deleted; 0 keeps "
                     "them forever.",
                     "30"),
           ValueFlag("job-lease-ttl", "DURATION",
                     "A training job's lease, renewed every third of it: how long a job "
                     "waits after its replica died before another resumes it (1s to 10m).",
                     "15s"),
           ValueFlag("job-max-attempts", "N",
                     "Times a job's lease may expire (its replica died, hung or lost the "
                     "store) before the job ends FAILED; 1 to 100.",
                     "3")},
      }),
  };
}

CommandDef Generate() {
  return {
      "steerd generate",
      {},
      "Generate text with a model, optionally steered.",
      "",
      ConcatFlags({
          ModelFlags(),
          {ValueFlag("prompt", "TEXT", "The prompt, encoded by the model's tokenizer. Or --ids."),
           ValueFlag("ids", "1,2,3", "The prompt as token ids. Or --prompt."),
           ValueFlag("max-new-tokens", "N", "Longest completion.", "64"),
           ValueFlag("temperature", "T", "Sampling temperature; 0 is greedy.", "0"),
           ValueFlag("top-p", "P", "Nucleus sampling mass.", "1"),
           ValueFlag("top-k", "K", "Sample from the K likeliest tokens; 0 is off.", "0"),
           ValueFlag("seed", "S", "Sampling seed.", "0"),
           ValueFlag("stop", "TEXT", "Stop once the completion holds this text.")},
          SteeringFlags(),
          {BoolFlag("ignore-eos", "Go on past the end-of-sequence token."),
           BoolFlag("logprobs", "Also print each token's log-probability (with --json)."),
           JsonFlag("Print ids, text and finish reason as one JSON line.")},
      }),
  };
}

CommandDef Logits() {
  return {
      "steerd logits",
      {},
      "Print the logits of every position as JSON.",
      "",
      ConcatFlags({
          ModelFlags(),
          {RequiredFlag("ids", "1,2,3", "The input token ids.")},
          SteeringFlags(),
          {JsonFlag("Print JSON; needed, since logits prints nothing else.")},
      }),
  };
}

CommandDef Tokenize() {
  return {
      "steerd tokenize",
      {},
      "Encode JSONL lines {\"text\": ...}; print {\"ids\": [...], \"decoded\": ...} for each.",
      "",
      {RequiredFlag("model", "DIR", "Model folder; only its tokenizer files are read."),
       RequiredFlag("input", "FILE.jsonl", "One {\"text\": ...} object a line.")},
  };
}

CommandDef InitModel() {
  return {
      "steerd init-model",
      {},
      "Write a random-weight model in Hugging Face layout.",
      "Without --tokenizer or --tokenizer-corpus the model gets a byte-level tokenizer of "
      "256 tokens.",
      {RequiredFlag("config", "CONFIG.json", "The model's config.json."),
       RequiredFlag("out", "DIR", "The folder to write."),
       ValueFlag("seed", "N", "Seed of the random weights.", "0"),
       ValueFlag("dtype", "NAME", "Dtype of the weights: f32 or bf16.", "bf16"),
       ValueFlag("tokenizer", "DIR", "Copy this folder's tokenizer."),
       ValueFlag("tokenizer-corpus", "FILE.jsonl",
                 "Train a BPE tokenizer of up to the config's vocab_size tokens on the "
                 "records' prompt + solution (or answer), shrinking vocab_size if it stops "
                 "early.")},
  };
}

CommandDef Dataset() {
  return {
      "steerd dataset",
      {},
      "Write one split of a built-in task (arith, arith-words, hops) as JSONL.",
      "",
      {RequiredFlag("task", "NAME", "arith, arith-words or hops."),
       RequiredFlag("split", "NAME", "train, dev or test."),
       RequiredFlag("out", "FILE.jsonl", "The file to write."),
       ValueFlag("count", "N", "Examples.", "1000 train, 200 dev, 500 test"),
       ValueFlag("seed", "S", "Generator seed.", "0")},
  };
}

CommandDef Corpus() {
  return {
      "steerd corpus",
      {},
      "Write the mixed-mode pre-training corpus of the default model as JSONL.",
      "",
      {RequiredFlag("out", "FILE.jsonl", "The file to write."),
       ValueFlag("count", "N", "Records, 1 to 1000000.", "100000"),
       ValueFlag("seed", "S", "Generator seed.", "0"),
       ValueFlag("tagged-fraction", "F", "Share of prompts that also name the answer mode.",
                 "0")},
  };
}

CommandDef Train() {
  return {
      "steerd train",
      {},
      "Train a steering vector (or LoRA adapter, or every weight) on a task.",
      "",
      ConcatFlags({
          ModelFlags(),
          DataFlags(),
          {ValueFlag("method", "NAME", "What trains: steering, lora or full.", "steering"),
           ValueFlag("objective", "NAME", "rl (verifiable rewards) or sft.", "rl"),
           ValueFlag("algorithm", "NAME", "RL algorithm: rloo or grpo.", "rloo"),
           ValueFlag("steps", "N", "Optimizer steps.", "100"),
           ValueFlag("prompts-per-step", "P", "RL: distinct prompts per step.", "8"),
           ValueFlag("rollouts", "G", "RL: samples per prompt (at least 2).", "8"),
           ValueFlag("batch-size", "N", "SFT: examples per step.", "32"),
           ValueFlag("micro-batch", "N",
                     "Sequences per forward and backward pass (bounds activation memory).",
                     "32"),
           ValueFlag("lr", "X", "Learning rate.",
                     "by method: steering 1e-2, lora 1e-3, full 1e-4 (sft 1e-3)"),
           ValueFlag("warmup", "N", "Steps of linear warm-up from 0.", "0"),
           ValueFlag("schedule", "NAME",
                     "After warm-up: constant, or cosine (decays to 10%).", "constant"),
           ValueFlag("weight-decay", "X", "AdamW weight decay.", "0"),
           ValueFlag("grad-clip", "X", "Global gradient-norm clip; 0 is off.", "2"),
           ValueFlag("temperature", "T", "Rollout sampling temperature.", "1"),
           ValueFlag("grpo-epochs", "N", "GRPO: passes over each rollout batch.", "2"),
           ValueFlag("grpo-clip", "X", "GRPO: ratio clip epsilon.", "0.2"),
           ValueFlag("layers", "0,1,..", "Train only these layers' steering rows.", "all"),
           ValueFlag("lora-rank", "R", "LoRA rank.", "8"),
           ValueFlag("lora-alpha", "A", "LoRA alpha (scaling alpha / rank).", "2 x rank"),
           ValueFlag("lora-targets", "a,b",
                     "Projections LoRA adapts: q_proj, k_proj, v_proj, o_proj, gate_proj, "
                     "up_proj, down_proj.",
                     "down_proj"),
           BoolFlag("absolute-lr",
                    "Take the steering learning rate as given, not relative to each "
                    "layer's residual RMS."),
           ValueFlag("seed", "S", "Seed of sampling and initialisation.", "0"),
           ValueFlag("train-count", "N", "Training examples generated from --task.", "5000"),
           ValueFlag("eval-every", "N", "Evaluate on the dev set every N steps; 0 never.",
                     "0"),
           ValueFlag("eval-count", "N", "Dev examples generated from --task.", "200"),
           ValueFlag("eval-data", "FILE", "Dev set (JSONL) instead of the task's dev split."),
           ValueFlag("test-count", "N",
                     "Test examples evaluated after RL training on --task.", "500"),
           ValueFlag("checkpoint", "FILE",
                     "Trainer checkpoint for --checkpoint-every and --resume."),
           ValueFlag("checkpoint-every", "N", "Steps between checkpoints; 0 never.", "0"),
           BoolFlag("resume", "Continue from --checkpoint when it exists."),
           ValueFlag("out", "PATH",
                     "Where to write the result: a steering file, a LoRA adapter, or a "
                     "model folder (--method full)."),
           ValueFlag("save-dtype", "NAME", "Dtype of --method full's model folder: f32 or bf16.",
                     "f32"),
           JsonFlag("Print a JSON summary when done."),
           BoolFlag("quiet", "Print no progress on stderr.")},
      }),
  };
}

CommandDef Eval() {
  return {
      "steerd eval",
      {},
      "Accuracy (greedy unless --temperature) on a task split or a JSONL file.",
      "",
      ConcatFlags({
          ModelFlags(),
          DataFlags(),
          {ValueFlag("split", "NAME", "The task's split: train, dev or test.", "test"),
           ValueFlag("count", "N", "Examples generated from --task.",
                     "500 for test, else 200")},
          SteeringFlags(),
          {ValueFlag("lora", "FILE", "A LoRA adapter to apply."),
           ValueFlag("prefix", "TEXT",
                     "Appended to every prompt: forces the first words of the completion."),
           ValueFlag("batch-size", "N", "Sequences generated together.", "128"),
           ValueFlag("temperature", "T", "Sampling temperature; 0 is greedy.", "0"),
           ValueFlag("seed", "S", "Sampling seed (example i uses seed + i).", "0"),
           ValueFlag("show", "N", "Print the first N completions.", "0"),
           JsonFlag("Print {\"accuracy\", \"n\"} as JSON.")},
      }),
  };
}

CommandDef Inspect() {
  return {
      "steerd inspect",
      {},
      "A steering vector's per-layer norm and the tokens it boosts (logit lens).",
      "",
      ConcatFlags({
          ModelFlags(),
          {RequiredFlag("steering", "FILE", "The steering vector (safetensors)."),
           ValueFlag("scale", "X", "Multiplies the steering vector.",
                     "the file's scale, else 1"),
           ValueFlag("top", "K", "Tokens shown per layer.", "8"),
           JsonFlag("Print the layers as JSON.")},
      }),
  };
}

CommandDef BenchDecode() {
  return {
      "steerd bench decode",
      {},
      "Decode throughput of the offline generator at several batch sizes.",
      "",
      ConcatFlags({
          ModelFlags(),
          {ValueFlag("batch", "1,16", "Batch sizes to measure, 1 to 1024.", "1,16"),
           ValueFlag("new-tokens", "N", "Tokens generated per sequence, at least 2.", "32"),
           ValueFlag("prompt-tokens", "N", "Prompt length.", "16"),
           ValueFlag("repeats", "N", "Runs per batch size; the fastest counts.", "3"),
           JsonFlag("Also print the results as one JSON line.")},
      }),
  };
}

CommandDef BenchPaperTable() {
  return {
      "steerd bench paper-table",
      {},
      "Steering vs LoRA r1/r8 vs full fine-tuning, same RL recipe: accuracy and cost.",
      "Runs `steerd eval` once and `steerd train` per method and seed.",
      {RequiredFlag("model", "DIR", "The base model folder."),
       ValueFlag("task", "NAME", "The task trained and tested on.", "arith"),
       ValueFlag("seeds", "N", "Seeds per method.", "3"),
       ValueFlag("steps", "N", "Passed to steerd train.", "train's"),
       ValueFlag("prompts-per-step", "P", "Passed to steerd train.", "train's"),
       ValueFlag("rollouts", "G", "Passed to steerd train.", "train's"),
       ValueFlag("test-count", "N", "Passed to steerd train.", "train's"),
       ValueFlag("threads", "N", "Passed to steerd train.", "train's"),
       JsonFlag("Also print the table as one JSON line.")},
  };
}

CommandDef BenchServe() {
  return {
      "steerd bench serve",
      {},
      "The server in-process over localhost gRPC: closed-loop throughput and latency, "
      "steered vs unsteered, cold vs resident vectors, serving under training.",
      "",
      {ValueFlag("model", "DIR", "The model served.", "the embedded steerd-tiny"),
       ValueFlag("concurrency", "1,8,32", "Concurrent streams to measure, 1 to 1024.",
                 "1,8,32"),
       ValueFlag("seconds", "S", "Measured seconds per configuration.", "5"),
       ValueFlag("new-tokens", "N", "Tokens generated per request.", "64"),
       ThreadsFlag(),
       ValueFlag("max-batch", "N", "Running sequences per model.", "64"),
       DtypeFlag(),
       DeviceFlag(),
       ValueFlag("training-concurrency", "N",
                 "Streams measured with and without a training job running; 0 skips that.",
                 "8"),
       ValueFlag("http-concurrency", "N",
                 "Streams measured through gRPC and through the OpenAI HTTP API; 0 skips "
                 "that.",
                 "32"),
       JsonFlag("Print only the results, as one JSON line.")},
  };
}

CommandDef BenchChat() {
  return {
      "steerd bench chat",
      {},
      "Chat-shaped serving with the paged KV cache: multi-turn conversations with the "
      "prefix cache on and off, rows at one KV budget, paged vs contiguous decode steps.",
      "Simulated users of two tenants (one steered by its vector) hold conversations at "
      "once against the server in-process over localhost gRPC; every turn resends a shared "
      "system prompt and the history. Time to first token counts turns 2 and later.",
      {ValueFlag("model", "DIR", "The model served.", "the embedded steerd-tiny"),
       ValueFlag("users", "N", "Concurrent users, half of them steered, 2 to 256.", "4"),
       ValueFlag("turns-min", "N", "Fewest turns of a conversation.", "4"),
       ValueFlag("turns-max", "N", "Most turns of a conversation.", "8"),
       ValueFlag("system-tokens", "N", "Tokens of the shared system prompt.", "1000"),
       ValueFlag("history-tokens", "N", "About the prompt length of a conversation's last turn.",
                 "1500"),
       ValueFlag("new-tokens", "N", "Tokens generated per turn.", "32"),
       ValueFlag("burst", "N",
                 "Requests of mixed lengths sent at once to count the rows one KV budget "
                 "holds.",
                 "24"),
       ValueFlag("max-batch", "N", "Running sequences per model.", "64"),
       ValueFlag("phases", "LIST",
                 "What to measure, comma-separated: conversations, rows, decode.",
                 "conversations,rows,decode"),
       ThreadsFlag(),
       DtypeFlag(),
       DeviceFlag(),
       JsonFlag("Print only the results, as one JSON line.")},
  };
}

CommandDef BenchStore() {
  return {
      "steerd bench store",
      {},
      "Replicas on a shared PostgreSQL: how fast a created or deleted vector version "
      "reaches the other replicas, and reading a version by number.",
      "Runs the replicas in-process, each with its own connections and change feed. "
      "Writes under a tenant of its own and deletes what it wrote.",
      {StoreFlag("$STEERD_STORE; required"),
       ValueFlag("replicas", "N", "Replicas, 2 to 16.", "3"),
       ValueFlag("changes", "N", "Versions created (then deleted).", "200"),
       JsonFlag("Print only the results, as one JSON line.")},
  };
}

}  // namespace

const ProgramDef& SteerdProgram() {
  static const ProgramDef* const program = new ProgramDef{
      "steerd",
      "steerd: train and serve per-tenant steering vectors on frozen LLMs.",
      {Serve(), Migrate(), Generate(), Logits(), Tokenize(), InitModel(), Dataset(), Corpus(), Train(),
       Eval(), Inspect(), BenchDecode(), BenchPaperTable(), BenchServe(), BenchChat(), BenchStore()},
      "Errors are printed as \"error: <message>\" on stderr, with exit code 1.",
  };
  return *program;
}

}  // namespace steerd
