/**
 * `TokenStoreClient`: one method per route of the token-store HTTP API.
 */
import { HttpClient, HttpClientRequest, HttpClientResponse } from "@effect/platform"
import type { HttpClientError } from "@effect/platform"
import {
  Config,
  type ConfigError,
  Context,
  Duration,
  Effect,
  Layer,
  Option,
  ParseResult,
  Redacted,
  Schedule,
  Schema
} from "effect"
import {
  isUnavailable,
  TokenStoreDecodeError,
  TokenStoreInvalidRequestError,
  TokenStoreTransportError,
  type TokenStoreError
} from "./errors.js"
import { badSegment, parseRetryAfter, problemToError } from "./internal.js"
import {
  AccessToken,
  type AccessTokenOptions,
  GrantsPage,
  Health,
  type ListGrantsOptions,
  type ListWebhookDeliveriesOptions,
  ProblemBody,
  type Readiness,
  ReadinessBody,
  TokenRecord,
  type TokenInput,
  UserGrants,
  WebhookDeliveriesPage
} from "./schemas.js"

/** How 503 answers with a `Retry-After` are retried (idempotent calls only). */
export interface RetryOptions {
  /** Most retries after the first attempt. Default 3. */
  readonly times?: number | undefined
  /**
   * The longest `Retry-After` that is waited for. A 503 asking for longer fails at once
   * (with its `retryAfter`): retrying earlier than asked would only get another 503.
   * Default 5 seconds.
   */
  readonly maxRetryAfter?: Duration.DurationInput | undefined
}

export interface TokenStoreClientOptions {
  /** e.g. `http://token-store.internal:8080` (no trailing path). */
  readonly baseUrl: string
  /** The client's API key, sent as `Authorization: Bearer <key>`; never printed. */
  readonly apiKey: Redacted.Redacted<string>
  /** Retries of 503s for idempotent calls; `false` turns them off. */
  readonly retry?: RetryOptions | false | undefined
  /** Time limit of one attempt, the body included. Default 35 seconds (the service's own limit is 30 s). */
  readonly timeout?: Duration.DurationInput | undefined
}

export interface TokenStoreClientConfigOptions {
  /** Default `Config.string("TOKEN_STORE_URL")`. */
  readonly baseUrl?: Config.Config<string> | undefined
  /** Default `Config.redacted("TOKEN_STORE_API_KEY")`. */
  readonly apiKey?: Config.Config<Redacted.Redacted<string>> | undefined
  readonly retry?: RetryOptions | false | undefined
  readonly timeout?: Duration.DurationInput | undefined
}

/** The client: one method per route. Every call fails with a `TokenStoreError`. */
export interface TokenStoreClientService {
  /** `PUT /v1/users/{userId}/tokens/{provider}` (`write`): store or replace a grant. Retried on 503. */
  readonly putToken: (userId: string, provider: string, token: TokenInput) => Effect.Effect<void, TokenStoreError>
  /** `GET /v1/users/{userId}/tokens/{provider}` (`read`): the stored grant; 404 `token_not_found` if none. Retried on 503. */
  readonly getToken: (userId: string, provider: string) => Effect.Effect<TokenRecord, TokenStoreError>
  /**
   * `POST /v1/users/{userId}/tokens/{provider}/access-token` (`read`): an access token valid
   * now, refreshed first by the service if it expires within
   * `max(buffer, minValiditySeconds)`. Retried on 503 (safe to repeat).
   */
  readonly getAccessToken: (
    userId: string,
    provider: string,
    options?: AccessTokenOptions
  ) => Effect.Effect<AccessToken, TokenStoreError>
  /** `POST /v1/users/{userId}/tokens/{provider}/refresh` (`refresh`): force a refresh now. Never retried. */
  readonly refresh: (userId: string, provider: string) => Effect.Effect<AccessToken, TokenStoreError>
  /** `DELETE /v1/users/{userId}/tokens/{provider}` (`revoke`): revoke at the provider, then delete; succeeds if nothing was stored. Retried on 503. */
  readonly deleteToken: (userId: string, provider: string) => Effect.Effect<void, TokenStoreError>
  /** `DELETE /v1/users/{userId}/tokens` (`revoke`): the same for every grant of the user. Retried on 503. */
  readonly deleteUserTokens: (userId: string) => Effect.Effect<void, TokenStoreError>
  /**
   * `GET /v1/users/{userId}/tokens` (`read`): every grant of the user with its health and
   * scopes, never a token; `{ grants: [] }` if none. Retried on 503.
   */
  readonly listUserGrants: (userId: string) => Effect.Effect<UserGrants, TokenStoreError>
  /**
   * `GET /v1/grants` (`inspect`): one page of every grant with its health, in
   * `(userId, provider)` order, never a token. Pass the page's `nextCursor` as `cursor` for
   * the next one (`Option.none()` on the last page). A bad filter, cursor or limit is 422
   * `invalid_request`. Retried on 503.
   */
  readonly listGrants: (options?: ListGrantsOptions) => Effect.Effect<GrantsPage, TokenStoreError>
  /**
   * `GET /v1/webhook-deliveries` (`inspect`): one page of the webhook deliveries of grant
   * events, oldest first (e.g. `{ state: "failed" }`: those given up for good). Paged like
   * `listGrants`. Retried on 503.
   */
  readonly listWebhookDeliveries: (
    options?: ListWebhookDeliveriesOptions
  ) => Effect.Effect<WebhookDeliveriesPage, TokenStoreError>
  /** `GET /healthz` (no key sent). */
  readonly health: Effect.Effect<Health, TokenStoreError>
  /** `GET /readyz` (no key sent): `ready` is false on a 503, with the failing part in the body. */
  readonly readiness: Effect.Effect<Readiness, TokenStoreError>
}

const DEFAULT_RETRY_TIMES = 3
const DEFAULT_MAX_RETRY_AFTER = Duration.seconds(5)
const DEFAULT_TIMEOUT = Duration.seconds(35)
const USER_AGENT = "token-store-client-ts/0.1.0"

type Method = "GET" | "PUT" | "POST" | "DELETE"

interface Call<A> {
  readonly method: Method
  /** The route template, for the span's name. */
  readonly route: string
  readonly path: string
  readonly body?: unknown
  readonly authenticated: boolean
  readonly idempotent: boolean
  readonly onSuccess: (response: HttpClientResponse.HttpClientResponse, url: string) => Effect.Effect<A, TokenStoreError>
}

const header = (response: HttpClientResponse.HttpClientResponse, name: string): string | undefined => {
  const value = response.headers[name]
  return typeof value === "string" ? value : undefined
}

/** The fields at fault in a `ParseError`, never the values (a body may hold a token). */
const parseErrorFields = (error: ParseResult.ParseError): string => {
  const paths = ParseResult.ArrayFormatter.formatErrorSync(error).map((issue) =>
    issue.path.length === 0 ? "(body)" : issue.path.map(String).join(".")
  )
  return [...new Set(paths)].join(", ")
}

const decodeBody = <A, I>(
  schema: Schema.Schema<A, I>,
  method: Method,
  url: string
) =>
(response: HttpClientResponse.HttpClientResponse): Effect.Effect<A, TokenStoreDecodeError> =>
  HttpClientResponse.schemaBodyJson(schema)(response).pipe(
    Effect.mapError((error) => {
      const detail = error._tag === "ParseError"
        ? `unexpected body: invalid or missing ${parseErrorFields(error)}`
        : "the body is not readable JSON"
      return new TokenStoreDecodeError({
        method,
        url,
        status: response.status,
        detail,
        ...optionalRequestId(response)
      })
    })
  )

const optionalRequestId = (response: HttpClientResponse.HttpClientResponse): { requestId?: string } => {
  const requestId = header(response, "x-request-id")
  return requestId === undefined ? {} : { requestId }
}

/** A non-2xx answer as its `TokenStoreError`. */
const failure = (
  response: HttpClientResponse.HttpClientResponse,
  method: Method,
  url: string
): Effect.Effect<never, TokenStoreError> => {
  const contentType = header(response, "content-type") ?? ""
  if (!/json/i.test(contentType)) {
    return Effect.fail(
      new TokenStoreDecodeError({
        method,
        url,
        status: response.status,
        detail: `expected application/problem+json, got ${contentType === "" ? "no content type" : contentType.slice(0, 64)}`,
        ...optionalRequestId(response)
      })
    )
  }
  return decodeBody(ProblemBody, method, url)(response).pipe(
    Effect.flatMap((body) =>
      Effect.fail(problemToError(body, {
        method,
        url,
        status: response.status,
        requestId: header(response, "x-request-id"),
        retryAfter: parseRetryAfter(header(response, "retry-after"))
      }))
    )
  )
}

/** The messages (and codes) of an error's causes, never its other fields. */
const causeMessages = (u: unknown, depth = 0): Array<string> => {
  if (!(u instanceof Error) || depth > 4) return []
  const code = "code" in u && typeof u.code === "string" ? ` (${u.code})` : ""
  return [`${u.message}${code}`, ...causeMessages(u.cause, depth + 1)]
}

/**
 * Keeps the reason and the messages of the platform's error, not the error: it holds the
 * request, whose headers print unredacted outside a fiber.
 */
const transportError = (method: Method, url: string) => (error: HttpClientError.HttpClientError) =>
  new TokenStoreTransportError({
    reason: error._tag === "RequestError" ? error.reason : "Transport",
    method,
    url,
    detail: [error.description, ...causeMessages(error.cause)].filter((m) => m !== undefined && m !== "").join(": ") ||
      error.reason
  })

/** `?a=1&b=2` of the parameters that are defined (in the order given), or "" if none. */
const queryString = (params: ReadonlyArray<readonly [string, string | number | undefined]>): string => {
  const search = new URLSearchParams()
  for (const [name, value] of params) {
    if (value !== undefined) search.append(name, String(value))
  }
  const text = search.toString()
  return text === "" ? "" : `?${text}`
}

const validateBaseUrl = (baseUrl: string): string | undefined => {
  const trimmed = baseUrl.trim().replace(/\/+$/, "")
  return /^https?:\/\/[^/?#\s]+(\/[^?#\s]*)?$/i.test(trimmed) ? trimmed : undefined
}

/** Builds the client from options; needs an `HttpClient.HttpClient`. */
export const makeTokenStoreClient = (options: TokenStoreClientOptions): Effect.Effect<TokenStoreClientService, never, HttpClient.HttpClient> =>
  Effect.gen(function*() {
    const baseUrl = validateBaseUrl(options.baseUrl)
    if (baseUrl === undefined) {
      return yield* Effect.dieMessage(
        `TokenStoreClient: baseUrl must be an http(s) URL without query or fragment, got ${JSON.stringify(options.baseUrl)}`
      )
    }
    const http = yield* HttpClient.HttpClient
    const apiKey = options.apiKey
    const timeout = Duration.decode(options.timeout ?? DEFAULT_TIMEOUT)
    const retry = options.retry === false ? undefined : {
      times: Math.max(0, Math.floor(options.retry?.times ?? DEFAULT_RETRY_TIMES)),
      maxRetryAfter: Duration.decode(options.retry?.maxRetryAfter ?? DEFAULT_MAX_RETRY_AFTER)
    }

    /** A 503 whose `Retry-After` is within the limit. */
    const retryable = (e: TokenStoreError): boolean =>
      retry !== undefined && isUnavailable(e) && e.retryAfter !== undefined &&
      Duration.lessThanOrEqualTo(Duration.seconds(e.retryAfter), retry.maxRetryAfter)

    const retrySchedule = retry === undefined ? undefined : Schedule.identity<TokenStoreError>().pipe(
      Schedule.whileInput(retryable),
      Schedule.addDelay((e) => Duration.seconds(isUnavailable(e) ? e.retryAfter ?? 0 : 0)),
      Schedule.intersect(Schedule.recurs(retry.times))
    )

    const once = <A>(call: Call<A>, url: string): Effect.Effect<A, TokenStoreError> => {
      let request = HttpClientRequest.make(call.method)(url).pipe(
        HttpClientRequest.acceptJson,
        HttpClientRequest.setHeader("user-agent", USER_AGENT)
      )
      if (call.authenticated) request = HttpClientRequest.bearerToken(request, apiKey)
      if (call.body !== undefined) request = HttpClientRequest.bodyUnsafeJson(request, call.body)
      return http.execute(request).pipe(
        Effect.mapError(transportError(call.method, url)),
        Effect.flatMap((response): Effect.Effect<A, TokenStoreError> =>
          response.status >= 200 && response.status < 300
            ? call.onSuccess(response, url)
            : failure(response, call.method, url)
        ),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            new TokenStoreTransportError({
              reason: "Timeout",
              method: call.method,
              url,
              detail: `no complete answer within ${Duration.format(timeout)}`
            })
        })
      )
    }

    const send = <A>(call: Call<A>): Effect.Effect<A, TokenStoreError> => {
      const url = `${baseUrl}${call.path}`
      const attempt = once(call, url)
      const withRetry = call.idempotent && retrySchedule !== undefined
        ? attempt.pipe(
          Effect.tapError((e) =>
            retryable(e) && isUnavailable(e)
              ? Effect.logDebug("token-store answered 503 with a Retry-After within the retry limit").pipe(
                Effect.annotateLogs({ code: e.code, retryAfter: e.retryAfter, requestId: e.requestId, url })
              )
              : Effect.void
          ),
          Effect.retry(retrySchedule)
        )
        : attempt
      return Effect.withSpan(withRetry, `TokenStoreClient ${call.method} ${call.route}`, {
        kind: "client",
        attributes: { "http.request.method": call.method, "url.template": call.route }
      })
    }

    /** The path of a pair, or an invalid-request error for a segment the URL would normalise away. */
    const pairPath = (userId: string, provider: string): Effect.Effect<string, TokenStoreInvalidRequestError> =>
      badSegment(userId) || badSegment(provider)
        ? Effect.fail(
          new TokenStoreInvalidRequestError({
            status: 422,
            detail: badSegment(userId)
              ? "userId must not be empty, \".\" or \"..\" (checked by the client)"
              : "provider must not be empty, \".\" or \"..\" (checked by the client)"
          })
        )
        : Effect.succeed(`/v1/users/${encodeURIComponent(userId)}/tokens/${encodeURIComponent(provider)}`)

    /** The path of a user, or an invalid-request error for a segment the URL would normalise away. */
    const userPath = (userId: string): Effect.Effect<string, TokenStoreInvalidRequestError> =>
      badSegment(userId)
        ? Effect.fail(
          new TokenStoreInvalidRequestError({
            status: 422,
            detail: "userId must not be empty, \".\" or \"..\" (checked by the client)"
          })
        )
        : Effect.succeed(`/v1/users/${encodeURIComponent(userId)}/tokens`)

    const noContent = () => Effect.void
    const PAIR = "/v1/users/{userId}/tokens/{provider}"

    const service: TokenStoreClientService = {
      putToken: (userId, provider, token) =>
        pairPath(userId, provider).pipe(Effect.flatMap((path) =>
          send({
            method: "PUT",
            route: PAIR,
            path,
            authenticated: true,
            idempotent: true,
            body: {
              accessToken: token.accessToken,
              ...(Option.isSome(token.refreshToken) ? { refreshToken: token.refreshToken.value } : {}),
              expiresAt: token.expiresAt,
              scopes: token.scopes
            },
            onSuccess: noContent
          })
        )),
      getToken: (userId, provider) =>
        pairPath(userId, provider).pipe(Effect.flatMap((path) =>
          send({
            method: "GET",
            route: PAIR,
            path,
            authenticated: true,
            idempotent: true,
            onSuccess: (response, url) => decodeBody(TokenRecord, "GET", url)(response)
          })
        )),
      getAccessToken: (userId, provider, accessOptions) =>
        pairPath(userId, provider).pipe(Effect.flatMap((path) =>
          send({
            method: "POST",
            route: `${PAIR}/access-token`,
            path: `${path}/access-token`,
            authenticated: true,
            idempotent: true,
            body: {
              ...(accessOptions?.scopes === undefined ? {} : { scopes: accessOptions.scopes }),
              ...(accessOptions?.minValiditySeconds === undefined
                ? {}
                : { minValiditySeconds: accessOptions.minValiditySeconds })
            },
            onSuccess: (response, url) => decodeBody(AccessToken, "POST", url)(response)
          })
        )),
      refresh: (userId, provider) =>
        pairPath(userId, provider).pipe(Effect.flatMap((path) =>
          send({
            method: "POST",
            route: `${PAIR}/refresh`,
            path: `${path}/refresh`,
            authenticated: true,
            idempotent: false,
            onSuccess: (response, url) => decodeBody(AccessToken, "POST", url)(response)
          })
        )),
      deleteToken: (userId, provider) =>
        pairPath(userId, provider).pipe(Effect.flatMap((path) =>
          send({ method: "DELETE", route: PAIR, path, authenticated: true, idempotent: true, onSuccess: noContent })
        )),
      deleteUserTokens: (userId) =>
        userPath(userId).pipe(Effect.flatMap((path) =>
          send({
            method: "DELETE",
            route: "/v1/users/{userId}/tokens",
            path,
            authenticated: true,
            idempotent: true,
            onSuccess: noContent
          })
        )),
      listUserGrants: (userId) =>
        userPath(userId).pipe(Effect.flatMap((path) =>
          send({
            method: "GET",
            route: "/v1/users/{userId}/tokens",
            path,
            authenticated: true,
            idempotent: true,
            onSuccess: (response, url) => decodeBody(UserGrants, "GET", url)(response)
          })
        )),
      listGrants: (listOptions = {}) =>
        send({
          method: "GET",
          route: "/v1/grants",
          path: `/v1/grants${
            queryString([
              ["state", listOptions.state],
              ["provider", listOptions.provider],
              ["cursor", listOptions.cursor],
              ["limit", listOptions.limit]
            ])
          }`,
          authenticated: true,
          idempotent: true,
          onSuccess: (response, url) => decodeBody(GrantsPage, "GET", url)(response)
        }),
      listWebhookDeliveries: (listOptions = {}) =>
        send({
          method: "GET",
          route: "/v1/webhook-deliveries",
          path: `/v1/webhook-deliveries${
            queryString([
              ["state", listOptions.state],
              ["cursor", listOptions.cursor],
              ["limit", listOptions.limit]
            ])
          }`,
          authenticated: true,
          idempotent: true,
          onSuccess: (response, url) => decodeBody(WebhookDeliveriesPage, "GET", url)(response)
        }),
      health: send({
        method: "GET",
        route: "/healthz",
        path: "/healthz",
        authenticated: false,
        idempotent: false,
        onSuccess: (response, url) => decodeBody(Health, "GET", url)(response)
      }),
      readiness: Effect.gen(function*() {
        const url = `${baseUrl}/readyz`
        const request = HttpClientRequest.get(url).pipe(HttpClientRequest.acceptJson)
        const response = yield* http.execute(request).pipe(Effect.mapError(transportError("GET", url)))
        if (response.status !== 200 && response.status !== 503) {
          return yield* failure(response, "GET", url)
        }
        const body = yield* decodeBody(ReadinessBody, "GET", url)(response)
        return { ready: response.status === 200, database: body.database, kms: body.kms }
      }).pipe(
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            new TokenStoreTransportError({
              reason: "Timeout",
              method: "GET",
              url: `${baseUrl}/readyz`,
              detail: `no complete answer within ${Duration.format(timeout)}`
            })
        }),
        Effect.withSpan("TokenStoreClient GET /readyz", { kind: "client" })
      )
    }
    return service
  })

/** The token-store client. Provide it with `TokenStoreClient.layer` or `TokenStoreClient.layerConfig`. */
export class TokenStoreClient extends Context.Tag("@token-store/client/TokenStoreClient")<
  TokenStoreClient,
  TokenStoreClientService
>() {
  /** A layer from explicit options; needs `HttpClient.HttpClient` (e.g. `FetchHttpClient.layer`). */
  static readonly layer = (options: TokenStoreClientOptions): Layer.Layer<TokenStoreClient, never, HttpClient.HttpClient> =>
    Layer.effect(TokenStoreClient, makeTokenStoreClient(options))

  /**
   * A layer from configuration: `TOKEN_STORE_URL` and `TOKEN_STORE_API_KEY` unless other
   * `Config`s are given. Fails with a `ConfigError` if they are missing or the URL is not http(s).
   */
  static readonly layerConfig = (
    options: TokenStoreClientConfigOptions = {}
  ): Layer.Layer<TokenStoreClient, ConfigError.ConfigError, HttpClient.HttpClient> =>
    Layer.effect(
      TokenStoreClient,
      Effect.gen(function*() {
        const baseUrl = yield* (options.baseUrl ?? Config.string("TOKEN_STORE_URL")).pipe(
          Config.validate({
            message: "must be an http(s) URL without query or fragment",
            validation: (url: string) => validateBaseUrl(url) !== undefined
          })
        )
        const apiKey = yield* (options.apiKey ?? Config.redacted("TOKEN_STORE_API_KEY"))
        return yield* makeTokenStoreClient({ baseUrl, apiKey, retry: options.retry, timeout: options.timeout })
      })
    )
}
