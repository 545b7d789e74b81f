/**
 * Pure helpers of the client: the problem `code` → error class mapping and `Retry-After`.
 * @internal
 */
import {
  problemClasses,
  TokenStoreDecodeError,
  TokenStoreScopeExpansionRequiredError,
  type TokenStoreError
} from "./errors.js"
import type { ProblemBody } from "./schemas.js"

/** Where an answer came from, for the errors. */
export interface AnswerInfo {
  readonly method: string
  readonly url: string
  readonly status: number
  readonly requestId: string | undefined
  readonly retryAfter: number | undefined
}

/**
 * `Retry-After` in seconds: delta-seconds, or an HTTP date (seconds from `now`, at least 0);
 * `undefined` if absent or unreadable.
 */
export const parseRetryAfter = (value: string | undefined, now: number = Date.now()): number | undefined => {
  if (value === undefined) return undefined
  const text = value.trim()
  if (/^\d+$/.test(text)) return Number(text)
  const date = Date.parse(text)
  if (Number.isNaN(date)) return undefined
  return Math.max(0, Math.ceil((date - now) / 1000))
}

const isKnownCode = (code: string): code is keyof typeof problemClasses => Object.hasOwn(problemClasses, code)

/** The error class of a problem body's `code`; an unknown code is a `TokenStoreDecodeError`. */
export const problemToError = (body: ProblemBody, info: AnswerInfo): TokenStoreError => {
  const common = {
    status: info.status,
    detail: body.detail,
    ...(info.requestId === undefined ? {} : { requestId: info.requestId })
  }
  const code = body.code
  if (!isKnownCode(code)) {
    return new TokenStoreDecodeError({
      method: info.method,
      url: info.url,
      status: info.status,
      detail: `unknown problem code ${JSON.stringify(code.slice(0, 64))}: ${body.detail}`,
      ...(info.requestId === undefined ? {} : { requestId: info.requestId })
    })
  }
  switch (code) {
    case "scope_expansion_required":
      return new TokenStoreScopeExpansionRequiredError({ ...common, missingScopes: body.missingScopes ?? [] })
    case "provider_unavailable":
    case "provider_misconfigured":
    case "kms_unavailable":
    case "database_unavailable":
    case "request_timeout": {
      const Class = problemClasses[code]
      return new Class({ ...common, ...(info.retryAfter === undefined ? {} : { retryAfter: info.retryAfter }) })
    }
    default: {
      const Class = problemClasses[code]
      return new Class(common)
    }
  }
}

/** The segments "", "." and ".." would change the route once the URL is normalised. */
export const badSegment = (value: string): boolean => value === "" || value === "." || value === ".."
