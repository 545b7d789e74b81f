/**
 * `getValidToken`: an access token valid now, with the errors the app's Google client
 * already handles. The names are the app's (Google is the only provider today); each error
 * carries `provider`, so they read right for any provider.
 */
import { Effect, Schema } from "effect"
import type {
  TokenStoreProviderMisconfiguredError,
  TokenStoreProviderNotConfiguredError,
  TokenStoreProviderUnavailableError,
  TokenStoreReauthorizationRequiredError,
  TokenStoreScopeExpansionRequiredError,
  TokenStoreTokenNotFoundError
} from "./errors.js"
import type { TokenStoreError } from "./errors.js"
import type { AccessToken } from "./schemas.js"
import { TokenStoreClient } from "./TokenStoreClient.js"

/**
 * The user must (re)authorize: nothing is stored (`no_token`, 404 `token_not_found`), or the
 * provider rejected the grant (`reauthorization_required`, 409; `invalid_grant`, or no
 * refresh token).
 */
export class GoogleAuthenticationError extends Schema.TaggedError<GoogleAuthenticationError>()(
  "GoogleAuthenticationError",
  {
    reason: Schema.Literal("no_token", "reauthorization_required"),
    provider: Schema.String,
    detail: Schema.String
  }
) {
  override get message(): string {
    return `${this.provider}: the user must authorize again (${this.reason}): ${this.detail}`
  }
}

/** The stored grant lacks `missingScopes` (403 `scope_expansion_required`): send the user through consent for them. */
export class GoogleScopeExpansionRequiredError extends Schema.TaggedError<GoogleScopeExpansionRequiredError>()(
  "GoogleScopeExpansionRequiredError",
  {
    provider: Schema.String,
    requestedScopes: Schema.Array(Schema.String),
    missingScopes: Schema.Array(Schema.String)
  }
) {
  override get message(): string {
    return `${this.provider}: the grant lacks scopes ${this.missingScopes.join(" ")}`
  }
}

/**
 * The token needed a refresh and it could not be done now: the provider failed transiently
 * (503 `provider_unavailable`, `retryAfter` seconds), the provider rejected the service's
 * OAuth client (503 `provider_misconfigured`, `retryAfter` seconds: a deployment error; the
 * grant works again, with no new consent, once an operator fixes the configuration), or the
 * service has no OAuth client for the provider (422 `provider_not_configured`, a deployment
 * error).
 */
export class GoogleTokenRefreshError extends Schema.TaggedError<GoogleTokenRefreshError>()(
  "GoogleTokenRefreshError",
  {
    reason: Schema.Literal("provider_unavailable", "provider_misconfigured", "provider_not_configured"),
    provider: Schema.String,
    detail: Schema.String,
    retryAfter: Schema.optional(Schema.Number)
  }
) {
  override get message(): string {
    const retry = this.retryAfter === undefined ? "" : `; retry after ${this.retryAfter} s`
    return `${this.provider}: the token could not be refreshed (${this.reason}): ${this.detail}${retry}`
  }
}

/**
 * The service answered with a token that does not live as long as asked: it expires within
 * `minValiditySeconds` (or has expired by this host's clock). This happens only when a
 * refresh was due but the provider is failing transiently (or the refresh lock was busy),
 * or the provider rejects the service's OAuth client: the service then serves the current
 * token while it has not actually expired.
 */
export class GoogleTokenExpiredError extends Schema.TaggedError<GoogleTokenExpiredError>()(
  "GoogleTokenExpiredError",
  {
    provider: Schema.String,
    /** Milliseconds since the Unix epoch. */
    expiresAt: Schema.Number,
    minValiditySeconds: Schema.Number
  }
) {
  override get message(): string {
    return `${this.provider}: the only token available expires at ${
      new Date(this.expiresAt).toISOString()
    }, within the ${this.minValiditySeconds} s asked for`
  }
}

/** The errors of `getValidToken` that are the user's or the provider's business. */
export type GetValidTokenError =
  | GoogleAuthenticationError
  | GoogleScopeExpansionRequiredError
  | GoogleTokenRefreshError
  | GoogleTokenExpiredError

/** The remaining client errors: the service's or the deployment's business (unauthorized, KMS down, ...). */
export type GetValidTokenServiceError = Exclude<
  TokenStoreError,
  | TokenStoreTokenNotFoundError
  | TokenStoreReauthorizationRequiredError
  | TokenStoreScopeExpansionRequiredError
  | TokenStoreProviderUnavailableError
  | TokenStoreProviderMisconfiguredError
  | TokenStoreProviderNotConfiguredError
>

export interface GetValidTokenOptions {
  /**
   * The token must stay valid this many seconds (at most 86400). The service refreshes
   * tokens expiring within `max(its buffer, this)`; if it can only serve a shorter-lived
   * one, this fails with `GoogleTokenExpiredError`. Default: the service's buffer (300 s),
   * and only an already expired token fails.
   */
  readonly minValiditySeconds?: number | undefined
}

/**
 * An access token for `scopes`, valid now (`POST .../access-token`, retried on 503 like
 * every idempotent call).
 */
export const getValidToken = (
  userId: string,
  provider: string,
  scopes: ReadonlyArray<string>,
  options: GetValidTokenOptions = {}
): Effect.Effect<AccessToken, GetValidTokenError | GetValidTokenServiceError, TokenStoreClient> =>
  Effect.gen(function*() {
    const client = yield* TokenStoreClient
    const minValiditySeconds = options.minValiditySeconds ?? 0
    const token = yield* client.getAccessToken(userId, provider, {
      scopes,
      minValiditySeconds: options.minValiditySeconds
    }).pipe(
      Effect.catchTags({
        TokenStoreTokenNotFoundError: (e) =>
          Effect.fail(new GoogleAuthenticationError({ reason: "no_token", provider, detail: e.detail })),
        TokenStoreReauthorizationRequiredError: (e) =>
          Effect.fail(new GoogleAuthenticationError({ reason: "reauthorization_required", provider, detail: e.detail })),
        TokenStoreScopeExpansionRequiredError: (e) =>
          Effect.fail(
            new GoogleScopeExpansionRequiredError({ provider, requestedScopes: scopes, missingScopes: e.missingScopes })
          ),
        TokenStoreProviderUnavailableError: (e) =>
          Effect.fail(
            new GoogleTokenRefreshError({
              reason: "provider_unavailable",
              provider,
              detail: e.detail,
              ...(e.retryAfter === undefined ? {} : { retryAfter: e.retryAfter })
            })
          ),
        TokenStoreProviderMisconfiguredError: (e) =>
          Effect.fail(
            new GoogleTokenRefreshError({
              reason: "provider_misconfigured",
              provider,
              detail: e.detail,
              ...(e.retryAfter === undefined ? {} : { retryAfter: e.retryAfter })
            })
          ),
        TokenStoreProviderNotConfiguredError: (e) =>
          Effect.fail(new GoogleTokenRefreshError({ reason: "provider_not_configured", provider, detail: e.detail }))
      })
    )
    if (token.expiresAt <= Date.now() + minValiditySeconds * 1000) {
      return yield* Effect.fail(
        new GoogleTokenExpiredError({ provider, expiresAt: token.expiresAt, minValiditySeconds })
      )
    }
    return token
  })
