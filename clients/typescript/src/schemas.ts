/**
 * The bodies of the token-store HTTP API (camelCase JSON, times in milliseconds since the
 * Unix epoch).
 */
import { Option, Schema } from "effect"

/** The status of a stored grant. */
export const TokenStatus = Schema.Literal("active", "reauthorization_required")
export type TokenStatus = typeof TokenStatus.Type

/**
 * `GET /v1/users/{userId}/tokens/{provider}`. `refreshToken` is `Option.none()` unless the
 * API key has the `read_refresh_token` permission and the grant has a refresh token.
 */
export const TokenRecord = Schema.Struct({
  accessToken: Schema.String,
  refreshToken: Schema.optionalWith(Schema.String, { as: "Option", nullable: true }),
  expiresAt: Schema.Number,
  scopes: Schema.Array(Schema.String),
  provider: Schema.String,
  status: TokenStatus
})
export interface TokenRecord extends Schema.Schema.Type<typeof TokenRecord> {}

/** `POST .../access-token` and `POST .../refresh`: an access token valid now. */
export const AccessToken = Schema.Struct({
  accessToken: Schema.String,
  expiresAt: Schema.Number,
  scopes: Schema.Array(Schema.String),
  tokenType: Schema.String
})
export interface AccessToken extends Schema.Schema.Type<typeof AccessToken> {}

/** `PUT /v1/users/{userId}/tokens/{provider}` (a `StoredToken` of the app fits as it is). */
export interface TokenInput {
  readonly accessToken: string
  readonly refreshToken: Option.Option<string>
  /** Milliseconds since the Unix epoch; must be positive. */
  readonly expiresAt: number
  readonly scopes: ReadonlyArray<string>
}

/** Options of `POST .../access-token`. */
export interface AccessTokenOptions {
  /** Scopes the grant must have (else `scope_expansion_required` with `missingScopes`). */
  readonly scopes?: ReadonlyArray<string> | undefined
  /** Refresh first if the token expires within this many seconds (at most 86400). */
  readonly minValiditySeconds?: number | undefined
}

/** `GET /healthz`. */
export const Health = Schema.Struct({ status: Schema.String })
export interface Health extends Schema.Schema.Type<typeof Health> {}

/** `GET /readyz` (200 or 503, the same body). */
export const ReadinessBody = Schema.Struct({ database: Schema.String, kms: Schema.String })
export interface Readiness {
  readonly ready: boolean
  readonly database: string
  readonly kms: string
}

/** An `application/problem+json` body. */
export const ProblemBody = Schema.Struct({
  type: Schema.optional(Schema.String),
  title: Schema.optional(Schema.String),
  status: Schema.optional(Schema.Number),
  code: Schema.String,
  detail: Schema.optionalWith(Schema.String, { default: () => "" }),
  missingScopes: Schema.optional(Schema.Array(Schema.String))
})
export interface ProblemBody extends Schema.Schema.Type<typeof ProblemBody> {}
