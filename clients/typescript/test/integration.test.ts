/**
 * The client against the real token-store (started by test/support/service.ts on the
 * database, LocalStack KMS and binary that scripts/ts-client-test.sh provides) and a fake
 * OAuth provider.
 */
import { FetchHttpClient, HttpClient, type HttpClientRequest } from "@effect/platform"
import { Cause, Effect, Exit, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import assert from "node:assert/strict"
import { randomBytes } from "node:crypto"
import { after, afterEach, before, describe, it } from "node:test"
import { inspect } from "node:util"
import {
  getValidToken,
  type GrantHealth,
  type GrantHealthState,
  GoogleAuthenticationError,
  GoogleScopeExpansionRequiredError,
  GoogleTokenExpiredError,
  GoogleTokenRefreshError,
  IntegrationTokenStore,
  IntegrationTokenStoreLive,
  type StoredToken,
  TokenRefreshError,
  TokenStoreClient,
  type TokenStoreClientOptions,
  TokenStoreForbiddenError,
  TokenStoreInvalidRequestError,
  type WebhookDelivery,
  type WebhookDeliveryState,
  TokenStoreProviderUnavailableError,
  TokenStoreReauthorizationRequiredError,
  TokenStoreScopeExpansionRequiredError,
  TokenStoreTokenNotFoundError,
  TokenStoreTransportError,
  TokenStoreUnauthorizedError
} from "@token-store/client"
import { GoogleAuthClient, GoogleAuthClientLive } from "./examples/google-auth-client.js"
import { type FakeProvider, startFakeProvider } from "./support/fake-provider.js"
import { type Service, startService } from "./support/service.js"
import { startWebhookReceiver, type WebhookReceiver } from "./support/webhook-receiver.js"

const CLIENT_ID = "ts-client-test.apps.googleusercontent.com"
const CLIENT_SECRET = `client-secret-${randomBytes(12).toString("hex")}`

let provider: FakeProvider
let service: Service
let receiver: WebhookReceiver

/** Every request the clients sent, in order (the HttpClient under the client, not a mock of the service). */
const sent: Array<HttpClientRequest.HttpClientRequest> = []
const countingHttpClient = Layer.effect(
  HttpClient.HttpClient,
  Effect.map(HttpClient.HttpClient, (client) =>
    HttpClient.tapRequest(client, (request) => Effect.sync(() => void sent.push(request))))
).pipe(Layer.provide(FetchHttpClient.layer))

const clientLayer = (key: string, options: Partial<TokenStoreClientOptions> = {}) =>
  TokenStoreClient.layer({ baseUrl: service.baseUrl, apiKey: Redacted.make(key), ...options }).pipe(
    Layer.provide(countingHttpClient)
  )

const appLayer = (key: string, options: Partial<TokenStoreClientOptions> = {}) =>
  IntegrationTokenStoreLive.pipe(Layer.provideMerge(clientLayer(key, options)))

type Env = TokenStoreClient | IntegrationTokenStore

/** Runs with the full-permission key unless another layer is given. */
const run = <A, E>(effect: Effect.Effect<A, E, Env>, layer = appLayer(service.fullKey)): Promise<A> =>
  Effect.runPromise(Effect.provide(effect, layer))

/** The failure of an effect expected to fail. */
const failure = <A, E>(effect: Effect.Effect<A, E, Env>, layer = appLayer(service.fullKey)): Promise<E> =>
  run(Effect.flip(effect), layer)

const userId = (label: string) => `${label}-${randomBytes(6).toString("hex")}`
const inSeconds = (s: number) => Date.now() + s * 1000

const storedToken = (overrides: Partial<StoredToken> = {}): StoredToken => ({
  accessToken: `ya29.stored-${randomBytes(8).toString("hex")}`,
  refreshToken: Option.some(`1//refresh-${randomBytes(8).toString("hex")}`),
  expiresAt: inSeconds(3600),
  scopes: ["openid", "email"],
  provider: "google",
  ...overrides
})

const store = (user: string, token: StoredToken) =>
  Effect.flatMap(IntegrationTokenStore, (s) => s.store(user, "google", token))

const sentTo = (suffix: string) => sent.filter((r) => r.url.endsWith(suffix))

const refreshTokenOf = (token: StoredToken) => Option.getOrThrow(token.refreshToken)

/** The raw JSON text of a GET, to check what the service sent (the schemas drop unknown fields). */
const rawGet = async (path: string, key = service.fullKey): Promise<string> => {
  const response = await fetch(`${service.baseUrl}${path}`, { headers: { authorization: `Bearer ${key}` } })
  assert.equal(response.status, 200, path)
  return response.text()
}

const grantOf = (grants: ReadonlyArray<GrantHealth>, user: string, providerName = "google"): GrantHealth => {
  const grant = grants.find((g) => g.userId === user && g.provider === providerName)
  assert.ok(grant !== undefined, `no grant of ${user}/${providerName} in ${grants.length}`)
  return grant
}

/** Every grant in the state (all of them if none), page by page. */
const allGrants = (state?: GrantHealthState, limit = 1000) =>
  Effect.gen(function*() {
    const client = yield* TokenStoreClient
    const grants: Array<GrantHealth> = []
    let cursor: string | undefined
    for (let pages = 1;; pages++) {
      const page = yield* client.listGrants({ state, cursor, limit })
      grants.push(...page.grants)
      if (Option.isNone(page.nextCursor)) return { grants, pages }
      assert.equal(page.grants.length, limit, "a page with a next one is full")
      cursor = page.nextCursor.value
    }
  })

/** Every delivery in the state, page by page. */
const allDeliveries = (state: WebhookDeliveryState) =>
  Effect.gen(function*() {
    const client = yield* TokenStoreClient
    const deliveries: Array<WebhookDelivery> = []
    let cursor: string | undefined
    for (;;) {
      const page = yield* client.listWebhookDeliveries({ state, cursor, limit: 1000 })
      deliveries.push(...page.deliveries)
      if (Option.isNone(page.nextCursor)) return deliveries
      cursor = page.nextCursor.value
    }
  })

describe("TypeScript client against the real token-store", { timeout: 90_000 }, () => {
  before(async () => {
    provider = await startFakeProvider(CLIENT_ID, CLIENT_SECRET)
    receiver = await startWebhookReceiver()
    service = await startService({
      providerBaseUrl: provider.baseUrl,
      clientId: CLIENT_ID,
      clientSecret: CLIENT_SECRET,
      webhooks: { app: `${receiver.baseUrl}/ok`, broken: `${receiver.baseUrl}/broken` }
    })
  })

  after(async () => {
    await service?.stop()
    await provider?.close()
    await receiver?.close()
  })

  afterEach(() => provider.reset())

  it("health and readiness", async () => {
    const { health, ready } = await run(Effect.gen(function*() {
      const client = yield* TokenStoreClient
      return { health: yield* client.health, ready: yield* client.readiness }
    }))
    assert.equal(health.status, "ok")
    assert.deepEqual(ready, { ready: true, database: "ok", kms: "ok" })
  })

  it("store then get returns the grant (userId with @, : and +, percent-encoded)", async () => {
    const user = `${userId("alice")}+test@tenant:42`
    const token = storedToken()
    const got = await run(Effect.gen(function*() {
      const tokens = yield* IntegrationTokenStore
      yield* tokens.store(user, "google", token)
      return yield* tokens.get(user, "google")
    }))
    assert.ok(Option.isSome(got))
    assert.deepEqual(got.value, token)

    const record = await run(Effect.flatMap(TokenStoreClient, (c) => c.getToken(user, "google")))
    assert.equal(record.status, "active")
    assert.equal(record.provider, "google")
  })

  it("get of nothing is Option.none()", async () => {
    const got = await run(Effect.flatMap(IntegrationTokenStore, (s) => s.get(userId("nobody"), "google")))
    assert.ok(Option.isNone(got))
    const raw = await failure(Effect.flatMap(TokenStoreClient, (c) => c.getToken(userId("nobody"), "google")))
    assert.ok(raw instanceof TokenStoreTokenNotFoundError)
    assert.equal(raw.status, 404)
    assert.ok(raw.requestId !== undefined && raw.requestId.length > 0, "carries x-request-id")
  })

  it("a refresh token is omitted without the read_refresh_token permission", async () => {
    const user = userId("reader")
    const token = storedToken()
    await run(store(user, token))
    const got = await run(
      Effect.flatMap(IntegrationTokenStore, (s) => s.get(user, "google")),
      appLayer(service.readOnlyKey)
    )
    assert.ok(Option.isSome(got))
    assert.ok(Option.isNone(got.value.refreshToken))
    assert.equal(got.value.accessToken, token.accessToken)
  })

  it("a valid token is served as stored, without a provider call", async () => {
    const user = userId("valid")
    const token = storedToken()
    await run(store(user, token))
    const calls = provider.tokenCalls.length
    const access = await run(getValidToken(user, "google", ["openid"], { minValiditySeconds: 600 }))
    assert.equal(access.accessToken, token.accessToken)
    assert.equal(access.expiresAt, token.expiresAt)
    assert.equal(access.tokenType, "Bearer")
    assert.equal(provider.tokenCalls.length, calls, "no provider call")
  })

  it("an expired token is refreshed through the fake provider", async () => {
    const user = userId("expired")
    const token = storedToken({ expiresAt: inSeconds(-60) })
    await run(store(user, token))
    const access = await run(getValidToken(user, "google", ["email"]))
    const calls = provider.callsFor(refreshTokenOf(token))
    assert.equal(calls.length, 1)
    assert.equal(calls[0]?.grantType, "refresh_token")
    assert.equal(calls[0]?.clientId, CLIENT_ID)
    assert.equal(access.accessToken, calls[0]?.accessToken)
    assert.ok(access.expiresAt > inSeconds(3000), "the provider's expires_in counts")

    const got = await run(Effect.flatMap(IntegrationTokenStore, (s) => s.get(user, "google")))
    assert.equal(Option.getOrThrow(got).accessToken, access.accessToken)
    assert.deepEqual(Option.getOrThrow(got).refreshToken, token.refreshToken, "Google keeps the refresh token")
  })

  it("missing scopes: GoogleScopeExpansionRequiredError with missingScopes, never retried", async () => {
    const user = userId("scopes")
    await run(store(user, storedToken({ scopes: ["openid"] })))
    const before = sentTo("/access-token").length
    const error = await failure(getValidToken(user, "google", ["openid", "email", "drive.readonly"]))
    assert.ok(error instanceof GoogleScopeExpansionRequiredError, String(error))
    assert.deepEqual([...error.missingScopes].sort(), ["drive.readonly", "email"])
    assert.deepEqual(error.requestedScopes, ["openid", "email", "drive.readonly"])
    assert.equal(sentTo("/access-token").length - before, 1, "a 403 is not retried")

    const raw = await failure(Effect.flatMap(TokenStoreClient, (c) => c.getAccessToken(user, "google", { scopes: ["email"] })))
    assert.ok(raw instanceof TokenStoreScopeExpansionRequiredError)
    assert.equal(raw.status, 403)
    assert.deepEqual(raw.missingScopes, ["email"])
  })

  it("nothing stored: GoogleAuthenticationError (no_token)", async () => {
    const error = await failure(getValidToken(userId("unknown"), "google", ["openid"]))
    assert.ok(error instanceof GoogleAuthenticationError, String(error))
    assert.equal(error.reason, "no_token")
  })

  it("a dead grant (invalid_grant) is reauthorization_required: GoogleAuthenticationError", async () => {
    const user = userId("dead")
    const token = storedToken({ expiresAt: inSeconds(-60) })
    await run(store(user, token))
    provider.failNext("invalid_grant")
    const error = await failure(getValidToken(user, "google", ["openid"]))
    assert.ok(error instanceof GoogleAuthenticationError, String(error))
    assert.equal(error.reason, "reauthorization_required")
    assert.equal(provider.callsFor(refreshTokenOf(token)).length, 1)

    // The row is kept, marked; the raw client sees 409, refresh() a TokenRefreshError.
    const raw = await failure(Effect.flatMap(TokenStoreClient, (c) => c.getAccessToken(user, "google")))
    assert.ok(raw instanceof TokenStoreReauthorizationRequiredError)
    assert.equal(raw.status, 409)
    const record = await run(Effect.flatMap(TokenStoreClient, (c) => c.getToken(user, "google")))
    assert.equal(record.status, "reauthorization_required")
    const refreshError = await failure(Effect.flatMap(IntegrationTokenStore, (s) => s.refresh(user, "google")))
    assert.ok(refreshError instanceof TokenRefreshError)
    assert.equal(refreshError.cause._tag, "TokenStoreReauthorizationRequiredError")
    assert.equal(provider.callsFor(refreshTokenOf(token)).length, 1, "a dead grant is not sent again")

    // A new PUT revives it.
    await run(store(user, storedToken()))
    await run(getValidToken(user, "google", ["openid"]))
  })

  it("a wrong key is TokenStoreUnauthorizedError; a key without the permission is TokenStoreForbiddenError", async () => {
    const wrongKey = `tsk-wrong-${randomBytes(16).toString("hex")}`
    const before = sent.length
    const unauthorized = await failure(
      Effect.flatMap(TokenStoreClient, (c) => c.getToken(userId("x"), "google")),
      appLayer(wrongKey)
    )
    assert.ok(unauthorized instanceof TokenStoreUnauthorizedError, String(unauthorized))
    assert.equal(unauthorized.status, 401)
    assert.equal(sent.length - before, 1, "a 401 is not retried")

    const forbidden = await failure(
      Effect.flatMap(IntegrationTokenStore, (s) => s.store(userId("x"), "google", storedToken())),
      appLayer(service.readOnlyKey)
    )
    assert.ok(forbidden instanceof TokenStoreForbiddenError, String(forbidden))
    assert.equal(forbidden.status, 403)
  })

  it("revoke revokes at the provider and deletes; deleteUserTokens erases a user", async () => {
    const user = userId("revoke")
    const token = storedToken()
    await run(store(user, token))
    await run(Effect.flatMap(IntegrationTokenStore, (s) => s.revoke(user, "google")))
    assert.ok(provider.revokeCalls.some((c) => c.token === refreshTokenOf(token)), "revoked with the refresh token")
    const got = await run(Effect.flatMap(IntegrationTokenStore, (s) => s.get(user, "google")))
    assert.ok(Option.isNone(got))
    // Revoking nothing succeeds.
    await run(Effect.flatMap(IntegrationTokenStore, (s) => s.revoke(user, "google")))

    const other = userId("erase")
    await run(Effect.gen(function*() {
      yield* store(other, storedToken())
      yield* (yield* TokenStoreClient).putToken(other, "microsoft", storedToken({ provider: "microsoft" }))
      yield* (yield* TokenStoreClient).deleteUserTokens(other)
    }))
    const left = await run(Effect.gen(function*() {
      const tokens = yield* IntegrationTokenStore
      return [yield* tokens.get(other, "google"), yield* tokens.get(other, "microsoft")]
    }))
    assert.ok(left.every(Option.isNone))
  })

  it("bad input is a typed TokenStoreInvalidRequestError whose detail does not echo the value", async () => {
    const badUser = `leakcheck${"Q".repeat(191)}`
    assert.equal(badUser.length, 200)
    const error = await failure(Effect.flatMap(IntegrationTokenStore, (s) => s.get(badUser, "google")))
    assert.ok(error instanceof TokenStoreInvalidRequestError, String(error))
    assert.equal(error.status, 422)
    assert.ok(!error.detail.includes("leakcheck") && !error.detail.includes("QQQQ"), error.detail)
    assert.ok(!error.message.includes("leakcheck"), "the message carries the detail, not the URL")

    // userIds are opaque ids: an email address is refused (the service writes userIds to CloudTrail).
    const email = await failure(Effect.flatMap(IntegrationTokenStore, (s) => s.get("leakcheck@example.com", "google")))
    assert.ok(email instanceof TokenStoreInvalidRequestError, String(email))
    assert.equal(email.status, 422)
    assert.ok(!email.detail.includes("leakcheck"), email.detail)

    const tooLong = await failure(
      Effect.flatMap(TokenStoreClient, (c) => c.getAccessToken(userId("x"), "google", { minValiditySeconds: 90_000 }))
    )
    assert.ok(tooLong instanceof TokenStoreInvalidRequestError)
    assert.equal(tooLong.status, 422)

    // "." and ".." would be normalised out of the URL (another route): refused before sending.
    const before = sent.length
    const dot = await failure(Effect.flatMap(TokenStoreClient, (c) => c.deleteToken("alice", "..")))
    assert.ok(dot instanceof TokenStoreInvalidRequestError)
    assert.equal(sent.length, before, "nothing sent")
  })

  it("a 503 with Retry-After is retried and then succeeds (access-token)", async () => {
    const user = userId("retry")
    const token = storedToken({ expiresAt: inSeconds(-60) })
    await run(store(user, token))
    provider.failNext("503") // once; then the fake answers 200 again
    const before = sentTo(`/${user}/tokens/google/access-token`).length
    const started = Date.now()
    const access = await run(getValidToken(user, "google", ["openid"]))
    const attempts = sentTo(`/${user}/tokens/google/access-token`).length - before
    assert.ok(attempts >= 2 && attempts <= 4, `attempts: ${attempts}`)
    assert.ok(Date.now() - started >= 900, "waited for Retry-After")
    const calls = provider.callsFor(refreshTokenOf(token))
    assert.deepEqual(calls.map((c) => c.answered), [503, 200])
    assert.equal(access.accessToken, calls[1]?.accessToken)
  })

  it("without retries the 503 surfaces as provider_unavailable with retryAfter", async () => {
    const user = userId("noretry")
    await run(store(user, storedToken({ expiresAt: inSeconds(-60) })))
    provider.failNext("503")
    const error = await failure(
      Effect.flatMap(TokenStoreClient, (c) => c.getAccessToken(user, "google")),
      appLayer(service.fullKey, { retry: false })
    )
    assert.ok(error instanceof TokenStoreProviderUnavailableError, String(error))
    assert.equal(error.status, 503)
    assert.ok(error.retryAfter !== undefined && error.retryAfter >= 1 && error.retryAfter <= 2, `${error.retryAfter}`)
  })

  it("a Retry-After longer than maxRetryAfter is not waited for: GoogleTokenRefreshError at once", async () => {
    const user = userId("longretry")
    await run(store(user, storedToken({ expiresAt: inSeconds(-60) })))
    provider.failNext("503-long") // the provider asks for 30 s
    const before = sentTo(`/${user}/tokens/google/access-token`).length
    const started = Date.now()
    const error = await failure(getValidToken(user, "google", ["openid"]))
    assert.ok(error instanceof GoogleTokenRefreshError, String(error))
    assert.equal(error.reason, "provider_unavailable")
    assert.ok(error.retryAfter !== undefined && error.retryAfter >= 25, `${error.retryAfter}`)
    assert.equal(sentTo(`/${user}/tokens/google/access-token`).length - before, 1)
    assert.ok(Date.now() - started < 5000)
  })

  it("a forced refresh is not retried on 503", async () => {
    const user = userId("force503")
    await run(store(user, storedToken({ expiresAt: inSeconds(-60) })))
    provider.failNext("503")
    const before = sentTo(`/${user}/tokens/google/refresh`).length
    const error = await failure(Effect.flatMap(TokenStoreClient, (c) => c.refresh(user, "google")))
    assert.ok(error instanceof TokenStoreProviderUnavailableError, String(error))
    assert.equal(sentTo(`/${user}/tokens/google/refresh`).length - before, 1, "one attempt")

    const refreshError = await failure(Effect.flatMap(IntegrationTokenStore, (s) => s.refresh(user, "google")))
    assert.ok(refreshError instanceof TokenRefreshError)
    assert.equal(refreshError.cause._tag, "TokenStoreProviderUnavailableError")
    assert.ok(refreshError.retryAfter !== undefined && refreshError.retryAfter >= 1)
  })

  it("IntegrationTokenStore.refresh forces a new token from the provider", async () => {
    const user = userId("force")
    const token = storedToken()
    await run(store(user, token))
    const refreshed = await run(Effect.flatMap(IntegrationTokenStore, (s) => s.refresh(user, "google")))
    const calls = provider.callsFor(refreshTokenOf(token))
    assert.equal(calls.length, 1)
    assert.equal(refreshed.accessToken, calls[0]?.accessToken)
    assert.notEqual(refreshed.accessToken, token.accessToken)
    assert.equal(refreshed.provider, "google")
    assert.ok(Option.isNone(refreshed.refreshToken), "refresh never returns the refresh token")
  })

  it("GoogleTokenExpiredError when only a token shorter-lived than minValiditySeconds can be served", async () => {
    const user = userId("short")
    const token = storedToken({ expiresAt: inSeconds(120) }) // within the 300 s buffer: a refresh is due
    await run(store(user, token))
    provider.failNext("503") // the refresh fails transiently: the service serves the current token
    const error = await failure(getValidToken(user, "google", ["openid"], { minValiditySeconds: 600 }))
    assert.ok(error instanceof GoogleTokenExpiredError, String(error))
    assert.equal(error.expiresAt, token.expiresAt)
    // Asked for no particular validity, the same token is fine.
    const access = await run(getValidToken(user, "google", ["openid"]))
    assert.equal(access.accessToken, token.accessToken)
  })

  it("the README's GoogleAuthClientLive works over the client", async () => {
    const user = userId("google-client")
    const token = storedToken({ expiresAt: inSeconds(-60) })
    await run(store(user, token))
    const layer = GoogleAuthClientLive.pipe(Layer.provide(clientLayer(service.fullKey)))
    const accessToken = await Effect.runPromise(
      Effect.flatMap(GoogleAuthClient, (google) => google.getValidToken(user, ["openid"])).pipe(Effect.provide(layer))
    )
    assert.equal(accessToken, provider.callsFor(refreshTokenOf(token))[0]?.accessToken)
    const error = await Effect.runPromise(
      Effect.flatMap(GoogleAuthClient, (google) => google.getValidToken(user, ["openid", "drive"])).pipe(
        Effect.flip,
        Effect.provide(layer)
      )
    )
    assert.equal(error._tag, "GoogleScopeExpansionRequiredError")
    // The service's own trouble is a defect there: a wrong key dies.
    const wrong = GoogleAuthClientLive.pipe(Layer.provide(clientLayer(`tsk-wrong-${randomBytes(8).toString("hex")}`)))
    const exit = await Effect.runPromiseExit(
      Effect.flatMap(GoogleAuthClient, (google) => google.getValidToken(user, ["openid"])).pipe(Effect.provide(wrong))
    )
    assert.ok(Exit.isFailure(exit) && Cause.isDie(exit.cause))
  })

  it("listUserGrants: a user's grants with health and scopes, never a token (read permission)", async () => {
    const user = userId("health")
    const token = storedToken({ scopes: ["openid", "email"], expiresAt: inSeconds(3600) })
    const other = storedToken({ provider: "microsoft", scopes: ["offline_access"] })
    await run(Effect.gen(function*() {
      yield* store(user, token)
      yield* (yield* TokenStoreClient).putToken(user, "microsoft", other)
    }))

    const { grants } = await run(
      Effect.flatMap(TokenStoreClient, (c) => c.listUserGrants(user)),
      appLayer(service.readOnlyKey)
    )
    assert.deepEqual(grants.map((g) => g.provider).sort(), ["google", "microsoft"])
    const google = grantOf(grants, user)
    assert.equal(google.state, "active")
    assert.deepEqual([...google.scopes].sort(), ["email", "openid"])
    assert.equal(google.expiresAt, token.expiresAt)
    assert.ok(Option.isNone(google.reason))
    assert.ok(Option.isNone(google.consecutiveFailures))
    assert.ok(Option.isNone(google.lastErrorCode))
    assert.ok(Option.isNone(google.nextRetryAt))
    assert.ok(Option.isNone(google.lastRefreshedAt), "never refreshed")
    assert.ok(
      Option.isSome(google.nextRefreshAt) && google.nextRefreshAt.value < token.expiresAt,
      "the keeper refreshes it ahead of expiry"
    )
    assert.ok(!("accessToken" in google) && !("refreshToken" in google))
    assert.deepEqual(grantOf(grants, user, "microsoft").scopes, ["offline_access"])

    // What the service sent, even to a key with read_refresh_token: no token at all.
    const raw = await rawGet(`/v1/users/${user}/tokens`)
    for (const secret of [token.accessToken, refreshTokenOf(token), other.accessToken, refreshTokenOf(other)]) {
      assert.ok(!raw.includes(secret), "a token in the answer")
    }
    assert.ok(!/accessToken|refreshToken/.test(raw), raw)

    const none = await run(Effect.flatMap(TokenStoreClient, (c) => c.listUserGrants(userId("nobody"))))
    assert.deepEqual(none, { grants: [] })
  })

  it("listUserGrants reports a degraded grant (transient failure) and a dead one with its reason", async () => {
    // Valid for an hour: the keeper leaves them alone; the forced refreshes fail. A transient
    // failure is counted and, the current token being valid, that one is served (200).
    const degradedUser = userId("degraded")
    const token = storedToken()
    await run(store(degradedUser, token))
    provider.failNext("503")
    const served = await run(Effect.flatMap(TokenStoreClient, (c) => c.refresh(degradedUser, "google")))
    assert.equal(served.accessToken, token.accessToken, "the current token, served while valid")
    assert.deepEqual(provider.callsFor(refreshTokenOf(token)).map((c) => c.answered), [503])
    const degraded = grantOf(
      (await run(Effect.flatMap(TokenStoreClient, (c) => c.listUserGrants(degradedUser)))).grants,
      degradedUser
    )
    assert.equal(degraded.state, "degraded")
    assert.deepEqual(degraded.consecutiveFailures, Option.some(1))
    assert.deepEqual(degraded.lastErrorCode, Option.some("http_503"))
    assert.ok(Option.isSome(degraded.nextRetryAt) && degraded.nextRetryAt.value > Date.now() - 60_000)
    assert.ok(Option.isNone(degraded.reason))

    const deadUser = userId("gone")
    await run(store(deadUser, storedToken()))
    provider.failNext("invalid_grant")
    const reauth = await failure(Effect.flatMap(TokenStoreClient, (c) => c.refresh(deadUser, "google")))
    assert.ok(reauth instanceof TokenStoreReauthorizationRequiredError, String(reauth))
    const dead = grantOf((await run(Effect.flatMap(TokenStoreClient, (c) => c.listUserGrants(deadUser)))).grants, deadUser)
    assert.equal(dead.state, "reauthorization_required")
    assert.deepEqual(dead.reason, Option.some("invalid_grant"))
    assert.ok(Option.isNone(dead.consecutiveFailures))
    assert.ok(Option.isNone(dead.nextRefreshAt), "a dead grant is not refreshed")
  })

  it("listGrants (inspect): filters by state and provider, pages with nextCursor, 422 on a bad query", async () => {
    const user = userId("inspected")
    const token = storedToken()
    await run(store(user, token))
    const deadUser = userId("inspected-dead")
    await run(store(deadUser, storedToken()))
    provider.failNext("invalid_grant")
    await failure(Effect.flatMap(TokenStoreClient, (c) => c.refresh(deadUser, "google")))

    const dead = await run(Effect.flatMap(TokenStoreClient, (c) =>
      c.listGrants({ state: "reauthorization_required", provider: "google", limit: 1000 })))
    assert.ok(Option.isNone(dead.nextCursor))
    assert.ok(dead.grants.every((g) => g.state === "reauthorization_required" && g.provider === "google"))
    assert.deepEqual(grantOf(dead.grants, deadUser).reason, Option.some("invalid_grant"))
    assert.ok(!dead.grants.some((g) => g.userId === user))
    const active = await run(allGrants("active"))
    assert.equal(grantOf(active.grants, user).expiresAt, token.expiresAt)
    assert.ok(!active.grants.some((g) => g.userId === deadUser))

    // Page by page (2 a page) gives every grant once, as one page of 1000 does.
    const { grants: everyGrant } = await run(allGrants(undefined, 1000))
    const paged = await run(allGrants(undefined, 2))
    const keys = paged.grants.map((g) => `${g.userId}/${g.provider}`)
    assert.equal(new Set(keys).size, keys.length, "no grant twice")
    assert.deepEqual(keys, everyGrant.map((g) => `${g.userId}/${g.provider}`))
    assert.ok(paged.pages >= 2, `${paged.pages} pages`)
    assert.ok(keys.includes(`${user}/google`) && keys.includes(`${deadUser}/google`))
    const raw = await rawGet("/v1/grants?limit=1000")
    assert.ok(!raw.includes(token.accessToken) && !raw.includes(refreshTokenOf(token)), "a token in the answer")

    for (
      const options of [
        { limit: 0 },
        { limit: 1001 },
        { cursor: "caf\u00e9" }, // not printable ASCII: no position the service gives
        { provider: "Not A Provider" },
        { state: "zombie" as GrantHealthState }
      ]
    ) {
      const error = await failure(Effect.flatMap(TokenStoreClient, (c) => c.listGrants(options)))
      assert.ok(error instanceof TokenStoreInvalidRequestError, `${JSON.stringify(options)}: ${String(error)}`)
      assert.equal(error.status, 422)
    }
  })

  it("listGrants and listWebhookDeliveries need inspect: a read key is TokenStoreForbiddenError", async () => {
    const grants = await failure(
      Effect.flatMap(TokenStoreClient, (c) => c.listGrants()),
      appLayer(service.readOnlyKey)
    )
    assert.ok(grants instanceof TokenStoreForbiddenError, String(grants))
    assert.equal(grants.status, 403)
    const deliveries = await failure(
      Effect.flatMap(TokenStoreClient, (c) => c.listWebhookDeliveries({ state: "failed" })),
      appLayer(service.readOnlyKey)
    )
    assert.ok(deliveries instanceof TokenStoreForbiddenError, String(deliveries))
    assert.equal(deliveries.status, 403)
  })

  it("listWebhookDeliveries (inspect): a grant event delivered to one endpoint and failed at the other", async () => {
    const user = userId("hooked")
    await run(store(user, storedToken()))
    // One attempt per delivery (test/support/service.ts): the 500 of /broken fails it for good.
    const find = (deliveries: ReadonlyArray<WebhookDelivery>, endpoint: string) =>
      deliveries.find((d) => d.userId === user && d.endpoint === endpoint && d.type === "grant.connected")
    let delivered: WebhookDelivery | undefined
    let failed: WebhookDelivery | undefined
    for (const deadline = Date.now() + 15_000; Date.now() < deadline;) {
      delivered ??= find(await run(allDeliveries("delivered")), "app")
      failed ??= find(await run(allDeliveries("failed")), "broken")
      if (delivered !== undefined && failed !== undefined) break
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    assert.ok(delivered !== undefined, "the grant.connected delivery to app was not delivered")
    assert.ok(failed !== undefined, "the grant.connected delivery to broken was not failed")

    assert.equal(delivered.state, "delivered")
    assert.equal(delivered.provider, "google")
    assert.equal(delivered.attempts, 1)
    assert.ok(Option.isNone(delivered.lastError))
    assert.ok(Option.isSome(delivered.deliveredAt) && !Number.isNaN(Date.parse(delivered.deliveredAt.value)))
    assert.ok(!Number.isNaN(Date.parse(delivered.createdAt)), delivered.createdAt)
    assert.ok(receiver.received.some((r) => r.path === "/ok" && r.webhookId === delivered?.eventId))

    assert.equal(failed.state, "failed")
    assert.equal(failed.eventId, delivered.eventId, "one event, one delivery per endpoint")
    assert.equal(failed.attempts, 1)
    assert.deepEqual(failed.lastError, Option.some("http_500"))
    assert.ok(Option.isNone(failed.deliveredAt))

    // Paging: a page of one points to the next delivery.
    const first = await run(Effect.flatMap(TokenStoreClient, (c) => c.listWebhookDeliveries({ limit: 1 })))
    assert.equal(first.deliveries.length, 1)
    assert.ok(Option.isSome(first.nextCursor))
    const second = await run(Effect.flatMap(TokenStoreClient, (c) =>
      c.listWebhookDeliveries({ limit: 1, cursor: Option.getOrThrow(first.nextCursor) })))
    assert.equal(second.deliveries.length, 1)
    assert.notDeepEqual(
      [second.deliveries[0]?.eventId, second.deliveries[0]?.endpoint],
      [first.deliveries[0]?.eventId, first.deliveries[0]?.endpoint]
    )
    const onlyFailed = await run(allDeliveries("failed"))
    assert.ok(onlyFailed.length > 0 && onlyFailed.every((d) => d.state === "failed"))

    const bad = await failure(Effect.flatMap(TokenStoreClient, (c) => c.listWebhookDeliveries({ limit: 0 })))
    assert.ok(bad instanceof TokenStoreInvalidRequestError, String(bad))
    assert.equal(bad.status, 422)
  })

  it("the API key never appears in formatted errors, requests, logs or the service's output", async () => {
    const wrongKey = `tsk-wrong-${randomBytes(16).toString("hex")}`
    const keys = [service.fullKey, wrongKey, service.readOnlyKey]
    const logs: Array<string> = []
    const capture = Logger.replace(
      Logger.defaultLogger,
      Logger.make((options) => {
        logs.push(Logger.logfmtLogger.log(options), JSON.stringify(Logger.structuredLogger.log(options)))
      })
    )
    const logged = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      effect.pipe(
        Effect.tapErrorCause((cause) => Effect.logError("call failed", cause)),
        Effect.exit,
        Effect.provide(capture),
        Logger.withMinimumLogLevel(LogLevel.Debug)
      )

    const closedPort = await (async () => {
      const { createServer } = await import("node:net")
      return new Promise<number>((resolve) => {
        const s = createServer().listen(0, "127.0.0.1", () => {
          const a = s.address()
          s.close(() => resolve(typeof a === "object" && a !== null ? a.port : 1))
        })
      })
    })()
    const unreachable = TokenStoreClient.layer({ baseUrl: `http://127.0.0.1:${closedPort}`, apiKey: Redacted.make(service.fullKey) })
      .pipe(Layer.provide(countingHttpClient))

    const user = userId("redact")
    await run(store(user, storedToken({ expiresAt: inSeconds(-60) })))
    provider.failNext("503")
    const exits: Array<Exit.Exit<unknown, unknown>> = [
      await run(logged(Effect.flatMap(TokenStoreClient, (c) => c.getToken(user, "google"))), appLayer(wrongKey)),
      await run(logged(Effect.flatMap(IntegrationTokenStore, (s) => s.get("x".repeat(200), "google")))),
      await run(logged(Effect.flatMap(TokenStoreClient, (c) => c.refresh(user, "google")))),
      await run(logged(Effect.flatMap(IntegrationTokenStore, (s) => s.refresh(user, "google")))),
      await run(logged(getValidToken(userId("none"), "google", ["openid"]))),
      await Effect.runPromise(
        logged(Effect.flatMap(TokenStoreClient, (c) => c.getToken(user, "google"))).pipe(Effect.provide(unreachable))
      )
    ]
    const errors = exits.map((exit) => {
      assert.ok(Exit.isFailure(exit))
      return Cause.squash(exit.cause)
    })
    const transport = errors[5]
    assert.ok(transport instanceof TokenStoreTransportError, String(transport))
    assert.equal(transport.reason, "Transport")

    const requests = sent.slice(-20)
    assert.ok(requests.length > 0)
    const texts: Array<string> = []
    const formats = (value: unknown) => [
      String(value),
      inspect(value, { depth: Infinity }),
      inspect(value, { depth: Infinity, showHidden: true }),
      JSON.stringify(value) ?? ""
    ]
    for (const error of errors) {
      texts.push(...formats(error), (error as Error).message, (error as Error).stack ?? "")
      texts.push(Cause.pretty(Cause.fail(error)))
    }
    for (const exit of exits) texts.push(...formats(exit))
    // The platform's request objects redact `authorization` only inside Effect's loggers
    // (util.inspect / JSON.stringify of one print the header): log them the Effect way.
    await Effect.runPromise(
      Effect.forEach(requests, (request) => Effect.logDebug("sent", request)).pipe(
        Effect.provide(capture),
        Logger.withMinimumLogLevel(LogLevel.Debug)
      )
    )
    texts.push(...logs)
    assert.ok(logs.some((l) => l.includes("<redacted>")), "the logged requests show the header redacted")
    texts.push(...formats({ baseUrl: service.baseUrl, apiKey: Redacted.make(service.fullKey) }))
    texts.push(service.log())

    for (const key of keys) {
      for (const text of texts) {
        assert.ok(!text.includes(key), `an API key appears in:\n${text.slice(0, 2000)}`)
      }
    }
    // The formatted errors say what happened.
    assert.ok(texts.some((t) => t.includes("TokenStoreUnauthorizedError")))
    assert.ok(logs.some((l) => l.includes("TokenStoreUnauthorizedError")))
    // Sanity: the requests did carry the key (so the check above means something).
    assert.ok(requests.some((r) => r.headers["authorization"] === `Bearer ${service.fullKey}`))
  })
})
