/**
 * Pure parts of the client: problem codes → error classes, Retry-After, configuration.
 * (Everything that talks HTTP is tested against the real service in integration.test.ts.)
 */
import { FetchHttpClient } from "@effect/platform"
import { ConfigProvider, Effect, Exit, Layer, Redacted } from "effect"
import assert from "node:assert/strict"
import { describe, it } from "node:test"
import {
  isTokenStoreError,
  problemClasses,
  TokenStoreClient,
  TokenStoreDecodeError,
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

  it("an unknown code is a TokenStoreDecodeError", () => {
    const error = problemToError({ code: "brand_new", detail: "d" }, info)
    assert.ok(error instanceof TokenStoreDecodeError)
    assert.ok(error.detail.includes("brand_new"))
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
