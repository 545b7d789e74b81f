/**
 * Pure parts of the client: problem codes → error classes, Retry-After, configuration, and
 * canned answers (an in-memory HttpClient) mapped onto errors.
 * (Everything that needs the real service is tested against it in integration.test.ts.)
 */
import { FetchHttpClient, HttpClient, HttpClientResponse } from "@effect/platform"
import { ConfigProvider, Effect, Exit, Layer, Option, Redacted } from "effect"
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
  type TokenStoreError,
  TokenStoreForbiddenError,
  TokenStoreInvalidRequestError,
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

/**
 * A `TokenStoreClient` whose every request gets this JSON body with a 200 (no network);
 * `requests` holds `METHOD url` of each request sent, `authorization` its header.
 */
const serving = (body: unknown) => {
  const requests: Array<string> = []
  const authorization: Array<string | undefined> = []
  const http = HttpClient.make((request) => {
    requests.push(`${request.method} ${request.url}`)
    authorization.push(request.headers["authorization"])
    return Effect.succeed(HttpClientResponse.fromWeb(
      request,
      new Response(JSON.stringify(body), {
        status: 200,
        headers: { "content-type": "application/json", "x-request-id": "req-7" }
      })
    ))
  })
  const layer = TokenStoreClient.layer({ baseUrl: "http://token-store.test", apiKey: Redacted.make("k") }).pipe(
    Layer.provide(Layer.succeed(HttpClient.HttpClient, http))
  )
  return { requests, authorization, layer }
}

const withClient = <A, E>(
  layer: Layer.Layer<TokenStoreClient>,
  f: (client: TokenStoreClient["Type"]) => Effect.Effect<A, E>
): Promise<A> => Effect.runPromise(Effect.flatMap(TokenStoreClient, f).pipe(Effect.provide(layer)))

/** As the service sends them: the fields that do not apply are left out; the two schedule times are null. */
const degradedGrant = {
  userId: "alice",
  provider: "google",
  state: "degraded",
  consecutiveFailures: 3,
  lastErrorCode: "http_503",
  nextRetryAt: 1_767_225_600_000,
  scopes: ["openid", "email"],
  expiresAt: 1_767_229_200_000,
  lastRefreshedAt: 1_767_222_000_000,
  nextRefreshAt: null
}
const deadGrant = {
  userId: "alice",
  provider: "microsoft",
  state: "reauthorization_required",
  reason: "invalid_grant",
  scopes: ["offline_access"],
  expiresAt: 1_767_200_000_000,
  lastRefreshedAt: null,
  nextRefreshAt: null
}
const activeGrant = {
  userId: "bob",
  provider: "google",
  state: "active",
  scopes: [],
  expiresAt: 1_767_229_200_000,
  lastRefreshedAt: null,
  nextRefreshAt: 1_767_228_600_000
}

describe("grant health (lifecycle routes)", () => {
  it("listUserGrants decodes a degraded grant and a dead grant with its reason", async () => {
    const { requests, authorization, layer } = serving({ grants: [degradedGrant, deadGrant] })
    const { grants } = await withClient(layer, (c) => c.listUserGrants("alice+1@tenant:42"))
    assert.deepEqual(requests, ["GET http://token-store.test/v1/users/alice%2B1%40tenant%3A42/tokens"])
    assert.deepEqual(authorization, ["Bearer k"])
    assert.equal(grants.length, 2)

    const [degraded, dead] = grants
    assert.ok(degraded !== undefined && dead !== undefined)
    assert.equal(degraded.state, "degraded")
    assert.equal(degraded.userId, "alice")
    assert.equal(degraded.provider, "google")
    assert.deepEqual(degraded.consecutiveFailures, Option.some(3))
    assert.deepEqual(degraded.lastErrorCode, Option.some("http_503"))
    assert.deepEqual(degraded.nextRetryAt, Option.some(1_767_225_600_000))
    assert.deepEqual(degraded.reason, Option.none())
    assert.deepEqual(degraded.scopes, ["openid", "email"])
    assert.equal(degraded.expiresAt, 1_767_229_200_000)
    assert.deepEqual(degraded.lastRefreshedAt, Option.some(1_767_222_000_000))
    assert.deepEqual(degraded.nextRefreshAt, Option.none())

    assert.equal(dead.state, "reauthorization_required")
    assert.deepEqual(dead.reason, Option.some("invalid_grant"))
    assert.deepEqual(dead.consecutiveFailures, Option.none())
    assert.deepEqual(dead.lastErrorCode, Option.none())
    assert.deepEqual(dead.nextRetryAt, Option.none())
    assert.deepEqual(dead.lastRefreshedAt, Option.none())
    assert.equal(dead.expiresAt, 1_767_200_000_000)
  })

  it("listUserGrants: no grants is an empty list; a bad userId is refused before sending", async () => {
    const { requests, layer } = serving({ grants: [] })
    assert.deepEqual(await withClient(layer, (c) => c.listUserGrants("nobody")), { grants: [] })
    const error = await withClient(layer, (c) => Effect.flip(c.listUserGrants("..")))
    assert.ok(error instanceof TokenStoreInvalidRequestError, String(error))
    assert.equal(error.status, 422)
    assert.equal(requests.length, 1, "nothing sent for \"..\"")
  })

  it("listGrants sends only the options given, encoded, and decodes nextCursor (string or null)", async () => {
    const { requests, layer } = serving({ grants: [activeGrant], nextCursor: "Ym9iL2dvb2dsZQ" })
    const page = await withClient(layer, (c) =>
      c.listGrants({ state: "reauthorization_required", provider: "google", cursor: "a/b+c=", limit: 50 }))
    assert.deepEqual(page.nextCursor, Option.some("Ym9iL2dvb2dsZQ"))
    assert.equal(page.grants[0]?.state, "active")
    assert.deepEqual(page.grants[0]?.nextRefreshAt, Option.some(1_767_228_600_000))
    await withClient(layer, (c) => c.listGrants())
    await withClient(layer, (c) => c.listGrants({ limit: 1, state: undefined }))
    assert.deepEqual(requests, [
      "GET http://token-store.test/v1/grants?state=reauthorization_required&provider=google&cursor=a%2Fb%2Bc%3D&limit=50",
      "GET http://token-store.test/v1/grants",
      "GET http://token-store.test/v1/grants?limit=1"
    ])

    const last = serving({ grants: [], nextCursor: null })
    const lastPage = await withClient(last.layer, (c) => c.listGrants({ cursor: "Ym9iL2dvb2dsZQ" }))
    assert.deepEqual(lastPage.grants, [])
    assert.ok(Option.isNone(lastPage.nextCursor), "null is the last page")
  })

  it("listWebhookDeliveries decodes deliveries and builds its query", async () => {
    const { requests, layer } = serving({
      deliveries: [
        {
          eventId: "evt_1",
          type: "grant.reauthorization_required",
          userId: "alice",
          provider: "google",
          createdAt: "2026-01-01T00:00:00Z",
          endpoint: "app",
          state: "failed",
          attempts: 12,
          lastError: "http_500",
          deliveredAt: null
        },
        {
          eventId: "evt_2",
          type: "grant.connected",
          userId: "bob",
          provider: "google",
          createdAt: "2026-01-01T00:00:01Z",
          endpoint: "app",
          state: "delivered",
          attempts: 1,
          lastError: null,
          deliveredAt: "2026-01-01T00:00:02Z"
        }
      ],
      nextCursor: null
    })
    const page = await withClient(layer, (c) => c.listWebhookDeliveries({ state: "failed", cursor: "MTIvYXBw", limit: 2 }))
    await withClient(layer, (c) => c.listWebhookDeliveries())
    assert.deepEqual(requests, [
      "GET http://token-store.test/v1/webhook-deliveries?state=failed&cursor=MTIvYXBw&limit=2",
      "GET http://token-store.test/v1/webhook-deliveries"
    ])
    assert.ok(Option.isNone(page.nextCursor))
    const [failed, delivered] = page.deliveries
    assert.ok(failed !== undefined && delivered !== undefined)
    assert.equal(failed.type, "grant.reauthorization_required")
    assert.equal(failed.state, "failed")
    assert.equal(failed.attempts, 12)
    assert.deepEqual(failed.lastError, Option.some("http_500"))
    assert.deepEqual(failed.deliveredAt, Option.none())
    assert.equal(delivered.createdAt, "2026-01-01T00:00:01Z")
    assert.deepEqual(delivered.lastError, Option.none())
    assert.deepEqual(delivered.deliveredAt, Option.some("2026-01-01T00:00:02Z"))
  })

  it("a body that is not the contract's is a TokenStoreDecodeError naming the field, not its value", async () => {
    const { layer } = serving({ grants: [{ ...degradedGrant, state: "zombie-state" }], nextCursor: null })
    const error = await withClient(layer, (c) => Effect.flip(c.listGrants()))
    assert.ok(error instanceof TokenStoreDecodeError, String(error))
    assert.ok(error.detail.includes("grants.0.state"), error.detail)
    assert.ok(!error.detail.includes("zombie"), error.detail)

    const delivery = {
      eventId: "evt_1",
      type: "grant.connected",
      userId: "alice",
      provider: "google",
      createdAt: "2026-01-01T00:00:00Z",
      endpoint: "app",
      state: "zombie-state",
      attempts: 1,
      lastError: null,
      deliveredAt: null
    }
    const deliveries = serving({ deliveries: [delivery], nextCursor: null })
    const bad = await withClient(deliveries.layer, (c) => Effect.flip(c.listWebhookDeliveries()))
    assert.ok(bad instanceof TokenStoreDecodeError, String(bad))
    assert.ok(bad.detail.includes("deliveries.0.state"), bad.detail)
    assert.ok(!bad.detail.includes("zombie"), bad.detail)
  })

  it("a 403 forbidden (key without inspect) is TokenStoreForbiddenError, not retried", async () => {
    const forbidden = {
      type: "urn:token-store:problem:forbidden",
      title: "Forbidden",
      status: 403,
      code: "forbidden",
      detail: "this API key lacks the permission for this operation"
    }
    const calls: Array<(c: TokenStoreClient["Type"]) => Effect.Effect<unknown, TokenStoreError>> = [
      (c) => c.listGrants({ limit: 10 }),
      (c) => c.listWebhookDeliveries()
    ]
    for (const call of calls) {
      const { requests, layer } = answering(403, forbidden)
      const error = await withClient(layer, (c) => Effect.flip(call(c)))
      assert.ok(error instanceof TokenStoreForbiddenError, String(error))
      assert.equal(error.status, 403)
      assert.equal(error.code, "forbidden")
      assert.equal(error.requestId, "req-9")
      assert.equal(error.detail, forbidden.detail)
      assert.equal(requests.length, 1)
    }
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
