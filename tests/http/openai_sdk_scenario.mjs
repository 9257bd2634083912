// Drives steerd's OpenAI-compatible HTTP API with the official `openai` JavaScript SDK
// (the exact version locked in tests/http/node, installed by scripts/install-test-node.sh)
// the way an existing chatbot backend would, and prints ONE JSON object of what came
// back on stdout: models, chat and text completions streamed and not, with a steering
// vector given as the `steering` extension field or as `model: BASE:VECTOR`, the errors
// of a wrong key, another tenant's vector and bad fields, and 32 concurrent streams. It
// asserts nothing: tests/integration/openai_http_test.cc compares every observation with
// gRPC Generate on the same server, so a mismatch is reported there with both sides.
// Inputs (environment): STEERD_HTTP_URL (http://HOST:PORT), STEERD_KEY and
// STEERD_OTHER_KEY (tenants alpha and beta), STEERD_MODEL, STEERD_VECTOR (alpha's),
// STEERD_OTHER_VECTOR (only beta's), STEERD_PROMPTS (JSON array of user messages),
// STEERD_MAX_TOKENS. Anything unexpected prints {"fatal", "causes", "stack"}, exits 1.

// The SDK lives in the test-only package beside this file, not in a node_modules that
// Node's resolution of a bare 'openai' would search from here, so it is imported by
// path (the package's own ES module entry point).
const sdkDir = new URL('./node/node_modules/openai/', import.meta.url);

const kConcurrentStreams = 32;
// Generous for the tiny model on a loaded 2-core machine; a hung server still ends the
// run (the C++ test also bounds the whole process). Scaled like the C++ tests' waits by
// STEERD_TEST_TIMEOUT_SCALE (tests/testing/timeouts.h) for sanitized servers.
const kTimeoutScale = Number(process.env.STEERD_TEST_TIMEOUT_SCALE) > 0
  ? Number(process.env.STEERD_TEST_TIMEOUT_SCALE) : 1;
const kRequestTimeoutMs = Math.round(120 * 1000 * kTimeoutScale);

function requiredEnv(name) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    throw new Error(`environment variable ${name} is not set`);
  }
  return value;
}

// What an APIError carries: the HTTP status and the body's `error` object ({message,
// type, code}); status is undefined for an error sent inside an event stream and for
// connection failures, which then show up as status null with the SDK's message.
function errorObservation(err, APIError) {
  if (!(err instanceof APIError)) throw err;
  return { status: err.status ?? null, error: err.error ?? null, message: err.message };
}

// Runs a call that must fail; a success is an observation too (status 200 and the
// body), so the C++ test reports it as a wrong status rather than a crash here.
async function expectFailure(call, APIError) {
  try {
    const body = await call();
    return { status: 200, error: null, body };
  } catch (err) {
    return errorObservation(err, APIError);
  }
}

// The SDK hands back the body as a string when its Content-Type is not JSON; the test
// then sees it instead of a list of nulls.
const nonJsonBody = (completion) =>
  typeof completion === 'string' ? { non_json_body: completion } : {};

function chatObservation(completion) {
  const choice = completion.choices?.[0];
  return {
    ...nonJsonBody(completion),
    text: choice?.message?.content ?? null,
    role: choice?.message?.role ?? null,
    finish_reason: choice?.finish_reason ?? null,
    choices: completion.choices?.length ?? null,
    usage: completion.usage ?? null,
    id: completion.id ?? null,
    object: completion.object ?? null,
    model: completion.model ?? null,
    steering: completion.steering ?? null,
  };
}

function completionObservation(completion) {
  const choice = completion.choices?.[0];
  return {
    ...nonJsonBody(completion),
    text: choice?.text ?? null,
    finish_reason: choice?.finish_reason ?? null,
    choices: completion.choices?.length ?? null,
    usage: completion.usage ?? null,
    id: completion.id ?? null,
    object: completion.object ?? null,
    model: completion.model ?? null,
    steering: completion.steering ?? null,
  };
}

// Folds a stream of chat.completion.chunk (or text_completion) chunks: the text is the
// concatenation of every chunk's first choice's delta (chat) or text (completions).
async function streamObservation(stream, textOf) {
  let text = '';
  let finishReason = null;
  let usage = null;
  let usageChunkChoices = null;
  let role = null;
  let steering = null;
  let chunks = 0;
  const objects = new Set();
  const ids = new Set();
  for await (const chunk of stream) {
    chunks += 1;
    objects.add(chunk.object);
    ids.add(chunk.id);
    const choice = chunk.choices?.[0];
    if (choice !== undefined) {
      // The first delta's role: OpenAI sends "assistant" in the first chunk only.
      if (chunks === 1) role = choice.delta?.role ?? null;
      text += textOf(choice) ?? '';
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
    if (chunk.usage) {
      usage = chunk.usage;
      usageChunkChoices = chunk.choices?.length ?? null;
    }
    if (chunk.steering) steering = chunk.steering;
  }
  return {
    text,
    finish_reason: finishReason,
    usage,
    usage_chunk_choices: usageChunkChoices,
    chunks,
    objects: [...objects],
    ids: [...ids],
    role,
    steering,
  };
}

const chatText = (choice) => choice.delta?.content;
const completionText = (choice) => choice.text;

async function main() {
  const url = requiredEnv('STEERD_HTTP_URL').replace(/\/+$/, '');
  const key = requiredEnv('STEERD_KEY');
  const otherKey = requiredEnv('STEERD_OTHER_KEY');
  const model = requiredEnv('STEERD_MODEL');
  const vector = requiredEnv('STEERD_VECTOR');
  const otherVector = requiredEnv('STEERD_OTHER_VECTOR');
  const prompts = JSON.parse(requiredEnv('STEERD_PROMPTS'));
  const maxTokens = Number.parseInt(requiredEnv('STEERD_MAX_TOKENS'), 10);
  if (!Array.isArray(prompts) || prompts.length === 0) {
    throw new Error('STEERD_PROMPTS must be a non-empty JSON array of strings');
  }
  if (!Number.isInteger(maxTokens) || maxTokens <= 0) {
    throw new Error('STEERD_MAX_TOKENS must be a positive integer');
  }

  const { default: OpenAI, APIError } = await import(new URL('index.mjs', sdkDir));
  const { VERSION } = await import(new URL('version.mjs', sdkDir));
  // No retries: a retried request would hide a failed one and count twice in limits.
  const clientFor = (apiKey) =>
    new OpenAI({ apiKey, baseURL: `${url}/v1`, maxRetries: 0, timeout: kRequestTimeoutMs });
  const client = clientFor(key);
  const otherClient = clientFor(otherKey);

  // Every request greedy and of the same length, so each equals gRPC Generate.
  const greedy = { temperature: 0, max_tokens: maxTokens };
  const messagesFor = (prompt) => [{ role: 'user', content: prompt }];
  // The SDK sends keys it does not know as they are, in the JSON body (its README,
  // "Undocumented request params"): this is how a client adds the extension.
  const steering = { steering: { vector, scale: 1.0 } };
  const prompt = prompts[0];
  const chatRequest = { model, messages: messagesFor(prompt), ...greedy };
  const streamed = { stream: true, stream_options: { include_usage: true } };

  const observations = { sdk_version: VERSION, node_version: process.version };

  const models = [];
  for await (const entry of client.models.list()) models.push(entry.id);
  observations.models = models;
  // Beta's view, so the test can check that neither tenant sees the other's vectors.
  const otherModels = [];
  for await (const entry of otherClient.models.list()) otherModels.push(entry.id);
  observations.other_models = otherModels;

  observations.chat = chatObservation(await client.chat.completions.create(chatRequest));
  observations.chat_stream = await streamObservation(
    await client.chat.completions.create({ ...chatRequest, ...streamed }), chatText);
  observations.chat_vector = chatObservation(
    await client.chat.completions.create({ ...chatRequest, ...steering }));
  observations.chat_vector_stream = await streamObservation(
    await client.chat.completions.create({ ...chatRequest, ...steering, ...streamed }),
    chatText);
  observations.chat_model_vector = chatObservation(
    await client.chat.completions.create({ ...chatRequest, model: `${model}:${vector}` }));

  const completionRequest = { model, prompt, ...greedy };
  observations.completion = completionObservation(
    await client.completions.create(completionRequest));
  observations.completion_stream = await streamObservation(
    await client.completions.create({ ...completionRequest, ...streamed }), completionText);

  observations.unauthorized = await expectFailure(
    () => clientFor(`${key}-wrong`).chat.completions.create(chatRequest), APIError);
  observations.other_tenant_vector = await expectFailure(
    () => client.chat.completions.create({
      ...chatRequest, steering: { vector: otherVector, scale: 1.0 } }),
    APIError);
  observations.bad_field = await expectFailure(
    () => client.chat.completions.create({ ...chatRequest, temperature: 7 }), APIError);
  observations.bad_n = await expectFailure(
    () => client.chat.completions.create({ ...chatRequest, n: 2 }), APIError);

  // All started before any is awaited, so the server batches them together. A failed
  // stream is recorded (not thrown) so the test names which one failed and why.
  const vectorModes = ['none', 'steering', 'model'];
  observations.concurrent = await Promise.all(
    Array.from({ length: kConcurrentStreams }, async (_, i) => {
      const promptIndex = i % prompts.length;
      const vectorMode = vectorModes[i % vectorModes.length];
      const request = { ...chatRequest, messages: messagesFor(prompts[promptIndex]), ...streamed };
      if (vectorMode === 'steering') Object.assign(request, steering);
      if (vectorMode === 'model') request.model = `${model}:${vector}`;
      const outcome = { i, prompt_index: promptIndex, prompt: prompts[promptIndex],
                        vector_mode: vectorMode };
      try {
        const got = await streamObservation(
          await client.chat.completions.create(request), chatText);
        return { ...outcome, text: got.text, finish_reason: got.finish_reason,
                 usage: got.usage, steering: got.steering, error: null };
      } catch (err) {
        return { ...outcome, text: null, finish_reason: null,
                 error: errorObservation(err, APIError) };
      }
    }));

  process.stdout.write(`${JSON.stringify(observations)}\n`);
}

try {
  await main();
} catch (err) {
  // The SDK's connection errors say only "Connection error."; the chain of causes says
  // why (fetch failed, then ECONNREFUSED and the like).
  const causes = [];
  for (let cause = err?.cause; cause !== undefined && cause !== null; cause = cause.cause) {
    causes.push(String(cause));
  }
  const fatal = { fatal: String(err), causes, stack: err?.stack ?? null };
  process.stdout.write(`${JSON.stringify(fatal)}\n`);
  // exitCode rather than exit(): lets stdout drain into a pipe before the process ends.
  process.exitCode = 1;
}
