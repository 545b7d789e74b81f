/**
 * A local fake OAuth provider behaving like Google's token endpoint: a form POST with
 * grant_type=refresh_token, client_id, client_secret and refresh_token answers
 * {access_token, expires_in, token_type: "Bearer"}. `failNext` makes the next calls answer
 * 503 or 400 invalid_grant; after them it answers 200 again.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"

/** "503": a 503 without Retry-After; "503-long": a 503 with `Retry-After: 30`. */
export type Failure = "503" | "503-long" | "invalid_grant"

export interface TokenCall {
  readonly grantType: string | null
  readonly clientId: string | null
  readonly refreshToken: string | null
  readonly answered: number
  readonly accessToken?: string
}

export interface RevokeCall {
  readonly token: string | null
}

export interface FakeProvider {
  readonly baseUrl: string
  readonly tokenCalls: Array<TokenCall>
  readonly revokeCalls: Array<RevokeCall>
  /** The next `times` token calls answer `failure`. */
  failNext(failure: Failure, times?: number): void
  /** Forgets failures not yet used. */
  reset(): void
  /** Token calls that asked with this refresh token. */
  callsFor(refreshToken: string): Array<TokenCall>
  close(): Promise<void>
}

const readBody = (req: IncomingMessage): Promise<string> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")))
    req.on("error", reject)
  })

const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
  res.writeHead(status, { "content-type": "application/json", ...headers })
  res.end(JSON.stringify(body))
}

export const startFakeProvider = async (
  clientId: string,
  clientSecret: string
): Promise<FakeProvider> => {
  const failures: Array<Failure> = []
  const tokenCalls: Array<TokenCall> = []
  const revokeCalls: Array<RevokeCall> = []
  let issued = 0

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const body = await readBody(req)
    const form = new URLSearchParams(body)
    if (req.method === "POST" && req.url === "/token") {
      const call = {
        grantType: form.get("grant_type"),
        clientId: form.get("client_id"),
        refreshToken: form.get("refresh_token")
      }
      if (form.get("client_id") !== clientId || form.get("client_secret") !== clientSecret) {
        tokenCalls.push({ ...call, answered: 401 })
        return json(res, 401, { error: "invalid_client", error_description: "The OAuth client was not found." })
      }
      if (call.grantType !== "refresh_token" || call.refreshToken === null) {
        tokenCalls.push({ ...call, answered: 400 })
        return json(res, 400, { error: "unsupported_grant_type" })
      }
      const failure = failures.shift()
      if (failure === "503") {
        tokenCalls.push({ ...call, answered: 503 })
        return json(res, 503, { error: "backend_error" })
      }
      if (failure === "503-long") {
        tokenCalls.push({ ...call, answered: 503 })
        return json(res, 503, { error: "backend_error" }, { "retry-after": "30" })
      }
      if (failure === "invalid_grant") {
        tokenCalls.push({ ...call, answered: 400 })
        return json(res, 400, { error: "invalid_grant", error_description: "Token has been expired or revoked." })
      }
      issued += 1
      const accessToken = `ya29.fake-${issued}-${Date.now()}`
      tokenCalls.push({ ...call, answered: 200, accessToken })
      return json(res, 200, {
        access_token: accessToken,
        expires_in: 3599,
        token_type: "Bearer",
        scope: "openid email"
      })
    }
    if (req.method === "POST" && req.url === "/revoke") {
      revokeCalls.push({ token: form.get("token") })
      res.writeHead(200)
      return res.end()
    }
    return json(res, 404, { error: "not_found" })
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      res.writeHead(500)
      res.end(String(err))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as AddressInfo

  return {
    baseUrl: `http://127.0.0.1:${port}`,
    tokenCalls,
    revokeCalls,
    failNext: (failure, times = 1) => {
      for (let i = 0; i < times; i++) failures.push(failure)
    },
    reset: () => {
      failures.length = 0
    },
    callsFor: (refreshToken) => tokenCalls.filter((c) => c.refreshToken === refreshToken),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}
