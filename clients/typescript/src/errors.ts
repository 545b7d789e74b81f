/**
 * The errors of the token-store client: one `Schema.TaggedError` per problem `code` of the
 * service, plus transport and decoding failures. None of them ever carries the API key, a
 * token or a request body.
 */
import { Schema } from "effect"

/** Fields every problem error carries. */
const problemFields = {
  /** The HTTP status of the answer. */
  status: Schema.Number,
  /** The service's `detail`: names a field or a rule, never a value. */
  detail: Schema.String,
  /** The `x-request-id` of the answer, to find the request in the service's logs. */
  requestId: Schema.optional(Schema.String)
}

/** Fields of the 503 problems: `retryAfter` is the `Retry-After` header, in seconds. */
const unavailableFields = {
  ...problemFields,
  retryAfter: Schema.optional(Schema.Number)
}

const describe = (code: string, status: number, detail: string): string =>
  `token-store ${code} (HTTP ${status}): ${detail}`

/** `invalid_request` (400/404/405/413/415/422): the request is malformed; the detail names the field. */
export class TokenStoreInvalidRequestError extends Schema.TaggedError<TokenStoreInvalidRequestError>()(
  "TokenStoreInvalidRequestError",
  problemFields
) {
  static readonly code = "invalid_request"
  get code(): "invalid_request" {
    return "invalid_request"
  }
  override get message(): string {
    return describe(this.code, this.status, this.detail)
  }
}

/** `unauthorized` (401): missing or unknown API key. */
export class TokenStoreUnauthorizedError extends Schema.TaggedError<TokenStoreUnauthorizedError>()(
  "TokenStoreUnauthorizedError",
  problemFields
) {
  static readonly code = "unauthorized"
  get code(): "unauthorized" {
    return "unauthorized"
  }
  override get message(): string {
    return describe(this.code, this.status, this.detail)
  }
}

/** `forbidden` (403): the API key lacks the route's permission. */
export class TokenStoreForbiddenError extends Schema.TaggedError<TokenStoreForbiddenError>()(
  "TokenStoreForbiddenError",
  problemFields
) {
  static readonly code = "forbidden"
  get code(): "forbidden" {
    return "forbidden"
  }
  override get message(): string {
    return describe(this.code, this.status, this.detail)
  }
}

/** `token_not_found` (404): nothing stored for this user and provider. */
export class TokenStoreTokenNotFoundError extends Schema.TaggedError<TokenStoreTokenNotFoundError>()(
  "TokenStoreTokenNotFoundError",
  problemFields
) {
  static readonly code = "token_not_found"
  get code(): "token_not_found" {
    return "token_not_found"
  }
  override get message(): string {
    return describe(this.code, this.status, this.detail)
  }
}

/** `scope_expansion_required` (403): the stored grant lacks `missingScopes`. */
export class TokenStoreScopeExpansionRequiredError
  extends Schema.TaggedError<TokenStoreScopeExpansionRequiredError>()("TokenStoreScopeExpansionRequiredError", {
    ...problemFields,
    missingScopes: Schema.Array(Schema.String)
  })
{
  static readonly code = "scope_expansion_required"
  get code(): "scope_expansion_required" {
    return "scope_expansion_required"
  }
  override get message(): string {
    return `${describe(this.code, this.status, this.detail)} (missing: ${this.missingScopes.join(" ")})`
  }
}

/** `reauthorization_required` (409): the grant is dead; the user must consent again. */
export class TokenStoreReauthorizationRequiredError
  extends Schema.TaggedError<TokenStoreReauthorizationRequiredError>()(
    "TokenStoreReauthorizationRequiredError",
    problemFields
  )
{
  static readonly code = "reauthorization_required"
  get code(): "reauthorization_required" {
    return "reauthorization_required"
  }
  override get message(): string {
    return describe(this.code, this.status, this.detail)
  }
}

/** `provider_not_configured` (422): a refresh is needed but the service has no OAuth client for the provider. */
export class TokenStoreProviderNotConfiguredError
  extends Schema.TaggedError<TokenStoreProviderNotConfiguredError>()(
    "TokenStoreProviderNotConfiguredError",
    problemFields
  )
{
  static readonly code = "provider_not_configured"
  get code(): "provider_not_configured" {
    return "provider_not_configured"
  }
  override get message(): string {
    return describe(this.code, this.status, this.detail)
  }
}

/** `provider_unavailable` (503): the provider failed transiently and the current token has expired. */
export class TokenStoreProviderUnavailableError
  extends Schema.TaggedError<TokenStoreProviderUnavailableError>()(
    "TokenStoreProviderUnavailableError",
    unavailableFields
  )
{
  static readonly code = "provider_unavailable"
  get code(): "provider_unavailable" {
    return "provider_unavailable"
  }
  override get message(): string {
    return retryMessage(describe(this.code, this.status, this.detail), this.retryAfter)
  }
}

/**
 * `provider_misconfigured` (503): the provider rejected the service's OAuth client
 * (`invalid_client` / `unauthorized_client`: an operator's wrong `client_id`, `client_secret`
 * or `client_auth`) and the current token has expired. The grant is not dead: it works again,
 * with no new consent, once an operator fixes the configuration.
 */
export class TokenStoreProviderMisconfiguredError
  extends Schema.TaggedError<TokenStoreProviderMisconfiguredError>()(
    "TokenStoreProviderMisconfiguredError",
    unavailableFields
  )
{
  static readonly code = "provider_misconfigured"
  get code(): "provider_misconfigured" {
    return "provider_misconfigured"
  }
  override get message(): string {
    return retryMessage(describe(this.code, this.status, this.detail), this.retryAfter)
  }
}

/** `kms_unavailable` (503): KMS unreachable or refusing. */
export class TokenStoreKmsUnavailableError extends Schema.TaggedError<TokenStoreKmsUnavailableError>()(
  "TokenStoreKmsUnavailableError",
  unavailableFields
) {
  static readonly code = "kms_unavailable"
  get code(): "kms_unavailable" {
    return "kms_unavailable"
  }
  override get message(): string {
    return retryMessage(describe(this.code, this.status, this.detail), this.retryAfter)
  }
}

/** `database_unavailable` (503): PostgreSQL down or too slow. */
export class TokenStoreDatabaseUnavailableError
  extends Schema.TaggedError<TokenStoreDatabaseUnavailableError>()(
    "TokenStoreDatabaseUnavailableError",
    unavailableFields
  )
{
  static readonly code = "database_unavailable"
  get code(): "database_unavailable" {
    return "database_unavailable"
  }
  override get message(): string {
    return retryMessage(describe(this.code, this.status, this.detail), this.retryAfter)
  }
}

/** `request_timeout` (503): the request took longer than the service's deadline. */
export class TokenStoreRequestTimeoutError extends Schema.TaggedError<TokenStoreRequestTimeoutError>()(
  "TokenStoreRequestTimeoutError",
  unavailableFields
) {
  static readonly code = "request_timeout"
  get code(): "request_timeout" {
    return "request_timeout"
  }
  override get message(): string {
    return retryMessage(describe(this.code, this.status, this.detail), this.retryAfter)
  }
}

/** `internal` (500): anything else; the service logged the cause. */
export class TokenStoreInternalError extends Schema.TaggedError<TokenStoreInternalError>()(
  "TokenStoreInternalError",
  problemFields
) {
  static readonly code = "internal"
  get code(): "internal" {
    return "internal"
  }
  override get message(): string {
    return describe(this.code, this.status, this.detail)
  }
}

/**
 * The request did not get an answer: connection refused or reset, DNS, the client-side
 * `timeout`, or a URL that cannot be built. `detail` is the text of the underlying errors.
 * The platform's `HttpClientError` is deliberately not kept as a cause: it holds the
 * request, whose `authorization` header is redacted only when printed inside a running
 * fiber (a logger or error reporter outside Effect would print the API key).
 */
export class TokenStoreTransportError extends Schema.TaggedError<TokenStoreTransportError>()(
  "TokenStoreTransportError",
  {
    reason: Schema.Literal("Transport", "Timeout", "InvalidUrl", "Encode"),
    method: Schema.String,
    url: Schema.String,
    detail: Schema.String
  }
) {
  override get message(): string {
    return `token-store request ${this.method} ${this.url} failed (${this.reason}): ${this.detail}`
  }
}

/**
 * An answer that is not what the API promises: a success body of the wrong shape, or an
 * error that is not `application/problem+json` (e.g. a load balancer's HTML 502) or has
 * an unknown `code`. The detail names fields, never the values (a body may hold a token).
 */
export class TokenStoreDecodeError extends Schema.TaggedError<TokenStoreDecodeError>()(
  "TokenStoreDecodeError",
  {
    method: Schema.String,
    url: Schema.String,
    status: Schema.Number,
    detail: Schema.String,
    requestId: Schema.optional(Schema.String)
  }
) {
  override get message(): string {
    return `token-store answered ${this.method} ${this.url} with HTTP ${this.status} that could not be decoded: ${this.detail}`
  }
}

/** The errors decoded from a problem+json answer, one per `code`. */
export type TokenStoreProblemError =
  | TokenStoreInvalidRequestError
  | TokenStoreUnauthorizedError
  | TokenStoreForbiddenError
  | TokenStoreTokenNotFoundError
  | TokenStoreScopeExpansionRequiredError
  | TokenStoreReauthorizationRequiredError
  | TokenStoreProviderNotConfiguredError
  | TokenStoreProviderUnavailableError
  | TokenStoreProviderMisconfiguredError
  | TokenStoreKmsUnavailableError
  | TokenStoreDatabaseUnavailableError
  | TokenStoreRequestTimeoutError
  | TokenStoreInternalError

/** Every error a `TokenStoreClient` call can fail with. */
export type TokenStoreError = TokenStoreProblemError | TokenStoreTransportError | TokenStoreDecodeError

/** The 503 problems: each carries `retryAfter`. */
export type TokenStoreUnavailableError =
  | TokenStoreProviderUnavailableError
  | TokenStoreProviderMisconfiguredError
  | TokenStoreKmsUnavailableError
  | TokenStoreDatabaseUnavailableError
  | TokenStoreRequestTimeoutError

/** A schema of every `TokenStoreError` (they are schemas themselves), e.g. to serialise one. */
export const TokenStoreError = Schema.Union(
  TokenStoreInvalidRequestError,
  TokenStoreUnauthorizedError,
  TokenStoreForbiddenError,
  TokenStoreTokenNotFoundError,
  TokenStoreScopeExpansionRequiredError,
  TokenStoreReauthorizationRequiredError,
  TokenStoreProviderNotConfiguredError,
  TokenStoreProviderUnavailableError,
  TokenStoreProviderMisconfiguredError,
  TokenStoreKmsUnavailableError,
  TokenStoreDatabaseUnavailableError,
  TokenStoreRequestTimeoutError,
  TokenStoreInternalError,
  TokenStoreTransportError,
  TokenStoreDecodeError
)

/** The problem `code` of the README's table. */
export type ProblemCode = TokenStoreProblemError["code"]

/** The error classes by `code`. */
export const problemClasses = {
  invalid_request: TokenStoreInvalidRequestError,
  unauthorized: TokenStoreUnauthorizedError,
  forbidden: TokenStoreForbiddenError,
  token_not_found: TokenStoreTokenNotFoundError,
  scope_expansion_required: TokenStoreScopeExpansionRequiredError,
  reauthorization_required: TokenStoreReauthorizationRequiredError,
  provider_not_configured: TokenStoreProviderNotConfiguredError,
  provider_unavailable: TokenStoreProviderUnavailableError,
  provider_misconfigured: TokenStoreProviderMisconfiguredError,
  kms_unavailable: TokenStoreKmsUnavailableError,
  database_unavailable: TokenStoreDatabaseUnavailableError,
  request_timeout: TokenStoreRequestTimeoutError,
  internal: TokenStoreInternalError
} as const

const errorTags: ReadonlySet<string> = new Set([
  ...Object.values(problemClasses).map((c) => c._tag),
  TokenStoreTransportError._tag,
  TokenStoreDecodeError._tag
])

/**
 * Whether `u` is one of this package's `TokenStoreError`s (by `_tag`, like `Effect.catchTag`,
 * so it holds across two copies of the package). On a union it narrows to the members that
 * are, so it works as a refinement, e.g. `Effect.catchIf(isTokenStoreError, ...)`.
 */
export const isTokenStoreError = <E>(u: E): u is TokenStoreErrorIn<E> =>
  u instanceof Error && "_tag" in u && typeof u._tag === "string" && errorTags.has(u._tag)

/** The `TokenStoreError`s of `E` (all of them if `E` is `unknown`). */
export type TokenStoreErrorIn<E> = unknown extends E ? TokenStoreError & E : Extract<E, TokenStoreError>

/** Whether `e` is a 503 problem (it carries `retryAfter`). */
export const isUnavailable = (e: TokenStoreError): e is TokenStoreUnavailableError =>
  e._tag === "TokenStoreProviderUnavailableError" || e._tag === "TokenStoreProviderMisconfiguredError" ||
  e._tag === "TokenStoreKmsUnavailableError" || e._tag === "TokenStoreDatabaseUnavailableError" ||
  e._tag === "TokenStoreRequestTimeoutError"

const retryMessage = (text: string, retryAfter: number | undefined): string =>
  retryAfter === undefined ? text : `${text}; retry after ${retryAfter} s`
