/**
 * Pure parts of the client: problem codes → error classes, Retry-After, configuration, and
 * canned answers (an in-memory HttpClient) mapped onto errors.
 * (Everything that needs the real service is tested against it in integration.test.ts.)
 */
import { FetchHttpClient, HttpClient, HttpClientResponse } from "@effect/platform"
import { ConfigProvider, Effect, Exit, Layer, Redacted } from "effect"
import assert from "node:assert/strict"
import { describe, it } from "node:test"
import {
  getValidToken,
  GoogleTokenRefreshError,
  isTokenStoreError,
  isUnavailable,
  problemClasses,
  TokenStoreClient,
  TokenStoreDecodeError,
  TokenStoreProviderMisconfiguredError,
  TokenStoreProviderUnavailableError,
  TokenStoreScopeExpansionRequiredError
} from "@token-store/client"
import { parseRetryAfter, problemToError } from "../dist/internal.js"

const info = { method: "GET", url: "http://h/v1/x", status: 503, requestId: "req-1", retryAfter: 7 }

describe("problem codes", () => {
  it("every code of the README table is its own TaggedError class", () => {
    const codes = [
      "invalid_request",
      "unauthorized",
      "forbidden",
      "token_not_found",
      "scope_expansion_required",
      "reauthorization_required",
      "provider_not_configured",
      "provider_unavailable",
      "provider_misconfigured",
      "kms_unavailable",
      "database_unavailable",
      "request_timeout",
      "internal"
    ] as const
    assert.deepEqual(Object.keys(problemClasses).sort(), [...codes].sort())
    const tags = new Set<string>()
    for (const code of codes) {
      const error = problemToError({ code, detail: `detail of ${code}` }, info)
      assert.ok(error instanceof problemClasses[code], code)
      assert.ok(isTokenStoreError(error))
      assert.equal("code" in error && error.code, code)
      assert.equal(error.status, 503)
      assert.equal(error.detail, `detail of ${code}`)
      assert.ok(error.message.includes(code))
      tags.add(error._tag)
    }
    assert.equal(tags.size, codes.length)
  })

  it("scope_expansion_required carries missingScopes; the 503s carry retryAfter", () => {
    const scopes = problemToError({ code: "scope_expansion_required", detail: "d", missingScopes: ["email"] }, info)
    assert.ok(scopes instanceof TokenStoreScopeExpansionRequiredError)
    assert.deepEqual(scopes.missingScopes, ["email"])
    const unavailable = problemToError({ code: "provider_unavailable", detail: "d" }, info)
    assert.ok(unavailable instanceof TokenStoreProviderUnavailableError)
    assert.equal(unavailable.retryAfter, 7)
    assert.equal(unavailable.requestId, "req-1")
  })

  it("provider_misconfigured is its own 503 error with retryAfter, not provider_unavailable", () => {
    const error = problemToError({ code: "provider_misconfigured", detail: "d" }, info)
    assert.ok(error instanceof TokenStoreProviderMisconfiguredError, String(error))
    assert.ok(!(error instanceof TokenStoreProviderUnavailableError))
    assert.equal(error._tag, "TokenStoreProviderMisconfiguredError")
    assert.equal(error.code, "provider_misconfigured")
    assert.equal(TokenStoreProviderMisconfiguredError.code, "provider_misconfigured")
    assert.equal(error.retryAfter, 7)
    assert.equal(error.requestId, "req-1")
    assert.ok(isUnavailable(error))
    assert.ok(error.message.includes("retry after 7 s"), error.message)
  })

  it("an unknown code is a TokenStoreDecodeError", () => {
    const error = problemToError({ code: "brand_new", detail: "d" }, info)
    assert.ok(error instanceof TokenStoreDecodeError)
    assert.ok(error.detail.includes("brand_new"))
  })
})

/**
 * A `TokenStoreClient` whose every request gets the same problem+json answer (no network);
 * `requests` counts the requests sent (retries included).
 */
const answering = (status: number, body: unknown, headers: Record<string, string> = {}) => {
  const requests: Array<string> = []
  const http = HttpClient.make((request) => {
    requests.push(`${request.method} ${request.url}`)
    return Effect.succeed(HttpClientResponse.fromWeb(
      request,
      new Response(JSON.stringify(body), {
        status,
        headers: { "content-type": "application/problem+json", "x-request-id": "req-9", ...headers }
      })
    ))
  })
  const layer = TokenStoreClient.layer({ baseUrl: "http://token-store.test", apiKey: Redacted.make("k") }).pipe(
    Layer.provide(Layer.succeed(HttpClient.HttpClient, http))
  )
  return { requests, layer }
}

const misconfigured = {
  type: "urn:token-store:problem:provider_misconfigured",
  title: "Service Unavailable",
  status: 503,
  code: "provider_misconfigured",
  detail: "the provider rejected the OAuth client"
}

describe("provider_misconfigured answers", () => {
  it("a 503 provider_misconfigured with Retry-After: 30 is TokenStoreProviderMisconfiguredError { retryAfter: 30 }", async () => {
    const { requests, layer } = answering(503, misconfigured, { "retry-after": "30" })
    const error = await Effect.runPromise(
      Effect.flatMap(TokenStoreClient, (client) => client.getAccessToken("u1", "google")).pipe(
        Effect.flip,
        Effect.provide(layer)
      )
    )
    assert.ok(error instanceof TokenStoreProviderMisconfiguredError, String(error))
    assert.equal(error.retryAfter, 30)
    assert.equal(error.status, 503)
    assert.equal(error.requestId, "req-9")
    assert.equal(error.detail, misconfigured.detail)
    // 30 s is over the default maxRetryAfter (5 s): failed at once, not retried.
    assert.equal(requests.length, 1)
  })

  it("getValidToken maps it to GoogleTokenRefreshError { reason: \"provider_misconfigured\", retryAfter }", async () => {
    const { layer } = answering(503, misconfigured, { "retry-after": "30" })
    const error = await Effect.runPromise(
      getValidToken("u1", "google", ["openid"]).pipe(Effect.flip, Effect.provide(layer))
    )
    assert.ok(error instanceof GoogleTokenRefreshError, String(error))
    assert.equal(error.reason, "provider_misconfigured")
    assert.equal(error.retryAfter, 30)
    assert.equal(error.provider, "google")
    assert.equal(error.detail, misconfigured.detail)
    assert.ok(error.message.includes("provider_misconfigured"), error.message)
  })
})

describe("isTokenStoreError", () => {
  it("narrows unknown values and unions", () => {
    const u: unknown = problemToError({ code: "internal", detail: "d" }, info)
    assert.ok(isTokenStoreError(u))
    assert.equal(u._tag, "TokenStoreInternalError") // compiles: narrowed to TokenStoreError
    assert.ok(!isTokenStoreError(new Error("x")))
    assert.ok(!isTokenStoreError({ _tag: "TokenStoreInternalError" }))
  })
})

describe("Retry-After", () => {
  it("reads delta-seconds and HTTP dates", () => {
    assert.equal(parseRetryAfter("5"), 5)
    assert.equal(parseRetryAfter(" 0 "), 0)
    assert.equal(parseRetryAfter(undefined), undefined)
    assert.equal(parseRetryAfter("soon"), undefined)
    const now = Date.parse("2025-01-01T00:00:00Z")
    assert.equal(parseRetryAfter("Wed, 01 Jan 2025 00:00:10 GMT", now), 10)
    assert.equal(parseRetryAfter("Tue, 31 Dec 2024 23:59:00 GMT", now), 0)
  })
})

describe("configuration", () => {
  const build = (layer: Layer.Layer<TokenStoreClient, unknown>, env: Map<string, string>) =>
    Effect.runPromiseExit(
      Effect.provide(TokenStoreClient, layer).pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(env))
      )
    )

  it("layerConfig reads TOKEN_STORE_URL and TOKEN_STORE_API_KEY", async () => {
    const exit = await build(
      TokenStoreClient.layerConfig().pipe(Layer.provide(FetchHttpClient.layer)),
      new Map([["TOKEN_STORE_URL", "http://127.0.0.1:1"], ["TOKEN_STORE_API_KEY", "k"]])
    )
    assert.ok(Exit.isSuccess(exit))
  })

  it("layerConfig fails with a ConfigError without the key, or with a URL that is not http(s)", async () => {
    const missing = await build(
      TokenStoreClient.layerConfig().pipe(Layer.provide(FetchHttpClient.layer)),
      new Map([["TOKEN_STORE_URL", "http://127.0.0.1:1"]])
    )
    assert.ok(Exit.isFailure(missing))
    assert.ok(String(missing.cause).includes("TOKEN_STORE_API_KEY"))
    const badUrl = await build(
      TokenStoreClient.layerConfig().pipe(Layer.provide(FetchHttpClient.layer)),
      new Map([["TOKEN_STORE_URL", "ftp://x"], ["TOKEN_STORE_API_KEY", "k"]])
    )
    assert.ok(Exit.isFailure(badUrl))
  })

  it("layer dies on a URL that is not http(s), without printing the key", async () => {
    const exit = await build(
      TokenStoreClient.layer({ baseUrl: "not a url", apiKey: Redacted.make("sekrit-key") }).pipe(
        Layer.provide(FetchHttpClient.layer)
      ),
      new Map()
    )
    assert.ok(Exit.isFailure(exit))
    assert.ok(!String(exit.cause).includes("sekrit-key"))
  })
})
