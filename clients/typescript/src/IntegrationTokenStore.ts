/**
 * `IntegrationTokenStore`: the app's interface, served by token-store.
 */
import { Context, Effect, Layer, Option, Schema } from "effect"
import { TokenStoreError, type TokenStoreError as TokenStoreErrorType } from "./errors.js"
import { TokenStoreClient } from "./TokenStoreClient.js"

/** The app's `StoredToken`, unchanged. */
export interface StoredToken {
  accessToken: string
  refreshToken: Option.Option<string>
  /** Milliseconds since the Unix epoch. */
  expiresAt: number
  scopes: ReadonlyArray<string>
  provider: string
}

/**
 * A refresh failed. `cause` is the client error behind it: e.g.
 * `TokenStoreReauthorizationRequiredError` (the user must consent again),
 * `TokenStoreTokenNotFoundError`, `TokenStoreProviderUnavailableError` (with `retryAfter`),
 * `TokenStoreProviderMisconfiguredError` (with `retryAfter`: the service's OAuth client was
 * rejected; the grant works again once an operator fixes it, no new consent needed).
 */
export class TokenRefreshError extends Schema.TaggedError<TokenRefreshError>()("TokenRefreshError", {
  provider: Schema.String,
  detail: Schema.String,
  /** Seconds, when the service said when to try again (a 503). */
  retryAfter: Schema.optional(Schema.Number),
  cause: TokenStoreError
}) {
  override get message(): string {
    return `refreshing the ${this.provider} token failed: ${this.detail}`
  }
}

/**
 * The app's `IntegrationTokenStoreService`, with two deliberate differences (see the
 * migration table of the README):
 * - `get`, `store` and `revoke` have an error channel, `TokenStoreError`: they are network
 *   calls now, and a failure is not a missing token;
 * - `refresh` takes no `refreshFn`: the service refreshes with its own OAuth client.
 */
export interface IntegrationTokenStoreService {
  /** The stored grant, `Option.none()` if there is none (404 `token_not_found`). */
  get(userId: string, provider: string): Effect.Effect<Option.Option<StoredToken>, TokenStoreErrorType>
  /** Stores or replaces the grant (`token.provider` is not sent: the `provider` argument names it). */
  store(userId: string, provider: string, token: StoredToken): Effect.Effect<void, TokenStoreErrorType>
  /** Forces a refresh at the provider, through the service. `refreshToken` of the result is always `none`. */
  refresh(userId: string, provider: string): Effect.Effect<StoredToken, TokenRefreshError>
  /** Revokes at the provider (best effort) and deletes; succeeds if nothing was stored. */
  revoke(userId: string, provider: string): Effect.Effect<void, TokenStoreErrorType>
}

export class IntegrationTokenStore extends Context.Tag("IntegrationTokenStore")<
  IntegrationTokenStore,
  IntegrationTokenStoreService
>() {}

const toRefreshError = (provider: string) => (cause: TokenStoreErrorType): TokenRefreshError =>
  new TokenRefreshError({
    provider,
    detail: cause.message,
    ...("retryAfter" in cause && cause.retryAfter !== undefined ? { retryAfter: cause.retryAfter } : {}),
    cause
  })

/** Builds the service over a `TokenStoreClient`. */
export const makeIntegrationTokenStore: Effect.Effect<IntegrationTokenStoreService, never, TokenStoreClient> = Effect
  .gen(function*() {
    const client = yield* TokenStoreClient
    return IntegrationTokenStore.of({
      get: (userId, provider) =>
        client.getToken(userId, provider).pipe(
          Effect.map((record): Option.Option<StoredToken> =>
            Option.some({
              accessToken: record.accessToken,
              refreshToken: record.refreshToken,
              expiresAt: record.expiresAt,
              scopes: record.scopes,
              provider: record.provider
            })
          ),
          Effect.catchTag("TokenStoreTokenNotFoundError", () => Effect.succeed(Option.none<StoredToken>()))
        ),
      store: (userId, provider, token) => client.putToken(userId, provider, token),
      refresh: (userId, provider) =>
        client.refresh(userId, provider).pipe(
          Effect.map((grant): StoredToken => ({
            accessToken: grant.accessToken,
            refreshToken: Option.none(),
            expiresAt: grant.expiresAt,
            scopes: grant.scopes,
            provider
          })),
          Effect.mapError(toRefreshError(provider))
        ),
      revoke: (userId, provider) => client.deleteToken(userId, provider)
    })
  })

/** `IntegrationTokenStore` over `TokenStoreClient`. */
export const IntegrationTokenStoreLive: Layer.Layer<IntegrationTokenStore, never, TokenStoreClient> = Layer.effect(
  IntegrationTokenStore,
  makeIntegrationTokenStore
)
