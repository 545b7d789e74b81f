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

/** The health of a grant, as the lifecycle routes report it. */
export const GrantHealthState = Schema.Literal("active", "degraded", "reauthorization_required")
export type GrantHealthState = typeof GrantHealthState.Type

/**
 * A grant's health, scopes and schedule (`GET /v1/users/{userId}/tokens`, `GET /v1/grants`):
 * never a token. The optional fields are `Option.none()` when the service omits them or
 * sends `null`:
 * - `reason` only when `reauthorization_required` (`invalid_grant`, `missing_refresh_token`, …);
 * - `consecutiveFailures`, `lastErrorCode` (`http_503`, `timeout`, …) and `nextRetryAt`
 *   only when `degraded`;
 * - `lastRefreshedAt` if a refresh ever worked, `nextRefreshAt` if the service will refresh
 *   the grant on its own.
 */
export const GrantHealth = Schema.Struct({
  userId: Schema.String,
  provider: Schema.String,
  state: GrantHealthState,
  reason: Schema.optionalWith(Schema.String, { as: "Option", nullable: true }),
  consecutiveFailures: Schema.optionalWith(Schema.Number, { as: "Option", nullable: true }),
  lastErrorCode: Schema.optionalWith(Schema.String, { as: "Option", nullable: true }),
  /** Milliseconds since the Unix epoch: no refresh before then. */
  nextRetryAt: Schema.optionalWith(Schema.Number, { as: "Option", nullable: true }),
  scopes: Schema.Array(Schema.String),
  /** Milliseconds since the Unix epoch. */
  expiresAt: Schema.Number,
  /** Milliseconds since the Unix epoch. */
  lastRefreshedAt: Schema.optionalWith(Schema.Number, { as: "Option", nullable: true }),
  /** Milliseconds since the Unix epoch. */
  nextRefreshAt: Schema.optionalWith(Schema.Number, { as: "Option", nullable: true })
})
export interface GrantHealth extends Schema.Schema.Type<typeof GrantHealth> {}

/** `GET /v1/users/{userId}/tokens`: every grant of the user (an empty list if none). */
export const UserGrants = Schema.Struct({ grants: Schema.Array(GrantHealth) })
export interface UserGrants extends Schema.Schema.Type<typeof UserGrants> {}

/** `GET /v1/grants`: a page of grants in `(userId, provider)` order. */
export const GrantsPage = Schema.Struct({
  grants: Schema.Array(GrantHealth),
  /** The next page's `cursor`; `Option.none()` on the last page. */
  nextCursor: Schema.optionalWith(Schema.String, { as: "Option", nullable: true })
})
export interface GrantsPage extends Schema.Schema.Type<typeof GrantsPage> {}

/** Options of `GET /v1/grants`; each one left out is not sent. */
export interface ListGrantsOptions {
  /** Only grants in this state. */
  readonly state?: GrantHealthState | undefined
  /** Only grants of this provider. */
  readonly provider?: string | undefined
  /** Where the page starts: the previous page's `nextCursor`. */
  readonly cursor?: string | undefined
  /** Most grants on the page: 1 to 1000 (else 422 `invalid_request`); the service's default is 100. */
  readonly limit?: number | undefined
}

/**
 * The state of a webhook delivery: `pending` (tried again after a backoff), `delivered`,
 * `failed` (given up after the configured number of attempts).
 */
export const WebhookDeliveryState = Schema.Literal("pending", "delivered", "failed")
export type WebhookDeliveryState = typeof WebhookDeliveryState.Type

/**
 * One grant event's delivery to one webhook endpoint. `createdAt` and `deliveredAt` are
 * RFC 3339 texts (not milliseconds), as the service sends them.
 */
export const WebhookDelivery = Schema.Struct({
  /** The event's `webhook-id`. */
  eventId: Schema.String,
  /** `grant.connected`, `grant.degraded`, `grant.reauthorization_required`, `grant.recovered` or `grant.revoked`. */
  type: Schema.String,
  userId: Schema.String,
  provider: Schema.String,
  /** When the event happened (RFC 3339). */
  createdAt: Schema.String,
  /** The endpoint's name in the service's configuration. */
  endpoint: Schema.String,
  state: WebhookDeliveryState,
  attempts: Schema.Number,
  /** The last failed attempt's reason (`http_500`, `timeout`, `connect`, …). */
  lastError: Schema.optionalWith(Schema.String, { as: "Option", nullable: true }),
  /** When the endpoint accepted it (RFC 3339). */
  deliveredAt: Schema.optionalWith(Schema.String, { as: "Option", nullable: true })
})
export interface WebhookDelivery extends Schema.Schema.Type<typeof WebhookDelivery> {}

/** `GET /v1/webhook-deliveries`: a page of deliveries, oldest first. */
export const WebhookDeliveriesPage = Schema.Struct({
  deliveries: Schema.Array(WebhookDelivery),
  /** The next page's `cursor`; `Option.none()` on the last page. */
  nextCursor: Schema.optionalWith(Schema.String, { as: "Option", nullable: true })
})
export interface WebhookDeliveriesPage extends Schema.Schema.Type<typeof WebhookDeliveriesPage> {}

/** Options of `GET /v1/webhook-deliveries`; each one left out is not sent. */
export interface ListWebhookDeliveriesOptions {
  /** Only deliveries in this state (`failed`: given up for good). */
  readonly state?: WebhookDeliveryState | undefined
  /** Where the page starts: the previous page's `nextCursor`. */
  readonly cursor?: string | undefined
  /** Most deliveries on the page: 1 to 1000 (else 422 `invalid_request`); the service's default is 100. */
  readonly limit?: number | undefined
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
