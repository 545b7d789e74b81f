/**
 * Starts the real `token-store serve` for the tests, with a generated configuration: a
 * free port, the test database, LocalStack KMS, the fake provider as `google`, no
 * background refreshes (the keeper looks for due grants only at start), two
 * clients (every permission, `inspect` included; read only) and, if given, webhook
 * endpoints (one attempt per delivery, so one that fails is `failed` at once).
 * scripts/ts-client-test.sh provides the binary, the migrated database and the KMS endpoint
 * through the environment.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { createHash, randomBytes } from "node:crypto"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"

export interface Service {
  readonly baseUrl: string
  /** Every permission (`inspect` included). */
  readonly fullKey: string
  /** Only `read`. */
  readonly readOnlyKey: string
  /** What the service printed so far (stdout and stderr). */
  log(): string
  stop(): Promise<void>
}

const required = (name: string): string => {
  const value = process.env[name]
  if (value === undefined || value === "") {
    throw new Error(
      `${name} is not set. These tests run against the real service: run scripts/ts-client-test.sh from the repository root.`
    )
  }
  return value
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.on("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

const sha256 = (text: string) => createHash("sha256").update(text).digest("hex")

const toml = (value: string) => JSON.stringify(value)

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

export interface ServiceOptions {
  readonly providerBaseUrl: string
  readonly clientId: string
  readonly clientSecret: string
  /** Webhook endpoints of grant events: name → URL. */
  readonly webhooks?: Readonly<Record<string, string>> | undefined
}

const webhooksToml = (endpoints: Readonly<Record<string, string>> | undefined): string => {
  if (endpoints === undefined || Object.keys(endpoints).length === 0) return ""
  const sections = Object.entries(endpoints).map(([name, url]) =>
    `
[webhooks.endpoints.${name}]
url = ${toml(url)}
secret = ${toml(`whsec_${randomBytes(24).toString("base64")}`)}
`
  )
  return `
[webhooks]
max_attempts = 1
timeout_ms = 2000
interval_ms = 200
${sections.join("")}`
}

export const startService = async (options: ServiceOptions): Promise<Service> => {
  const bin = required("TS_CLIENT_TEST_BIN")
  const databaseUrl = required("TS_CLIENT_TEST_DATABASE_URL")
  const kmsEndpoint = process.env.TS_CLIENT_TEST_KMS_ENDPOINT ?? "http://127.0.0.1:4566"
  const fullKey = `tsk-full-${randomBytes(24).toString("hex")}`
  const readOnlyKey = `tsk-read-${randomBytes(24).toString("hex")}`
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), "token-store-ts-"))
  const configPath = join(dir, "token-store.toml")
  writeFileSync(
    configPath,
    `[server]
listen = ${toml(`127.0.0.1:${port}`)}
log_format = "json"
shutdown_timeout_ms = 2000

[database]
url = ${toml(databaseUrl)}
max_connections = 4

[kms]
key_id = "alias/token-store-local"
endpoint_url = ${toml(kmsEndpoint)}

[refresh]
cooldown_base_seconds = 1
cooldown_max_seconds = 2
provider_timeout_ms = 3000
lock_timeout_ms = 5000

# The keeper keeps its schedule (nextRefreshAt) but looks for due grants only at start, on
# an empty database: a refresh in the background would take the fake provider's answers
# queued by a test (failNext) for the test's own call.
[keeper]
interval_ms = 3600000

[providers.google]
client_id = ${toml(options.clientId)}
client_secret = ${toml(options.clientSecret)}
token_endpoint = ${toml(`${options.providerBaseUrl}/token`)}
revoke_endpoint = ${toml(`${options.providerBaseUrl}/revoke`)}

[[clients]]
name = "ts-client-test"
key_sha256 = ${toml(sha256(fullKey))}
permissions = ["read", "write", "refresh", "revoke", "read_refresh_token", "inspect"]

[[clients]]
name = "ts-client-test-read-only"
key_sha256 = ${toml(sha256(readOnlyKey))}
permissions = ["read"]
${webhooksToml(options.webhooks)}`
  )

  // The binary takes every TOKEN_STORE_<SECTION>__* variable as configuration: none of the
  // caller's may override the file.
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith("TOKEN_STORE_")) env[k] = v
  }
  env.NO_COLOR = "1"
  env.RUST_LOG = "info"
  env.AWS_REGION ??= "us-east-1"
  env.AWS_ACCESS_KEY_ID ??= "test"
  env.AWS_SECRET_ACCESS_KEY ??= "test"

  let output = ""
  const child: ChildProcess = spawn(bin, ["serve", "--config", configPath], {
    env,
    stdio: ["ignore", "pipe", "pipe"]
  })
  child.stdout?.on("data", (c: Buffer) => (output += c.toString("utf8")))
  child.stderr?.on("data", (c: Buffer) => (output += c.toString("utf8")))
  let exited: number | null | undefined
  const exit = new Promise<void>((resolve) => {
    child.on("exit", (code, signal) => {
      exited = code ?? (signal === null ? -1 : -2)
      resolve()
    })
  })

  const baseUrl = `http://127.0.0.1:${port}`
  const stop = async () => {
    if (exited === undefined) {
      child.kill("SIGTERM")
      const killed = await Promise.race([exit.then(() => true), sleep(10_000).then(() => false)])
      if (!killed) {
        child.kill("SIGKILL")
        await exit
      }
    }
    rmSync(dir, { recursive: true, force: true })
  }

  const deadline = Date.now() + 30_000
  for (;;) {
    if (exited !== undefined) {
      await stop()
      throw new Error(`token-store exited (${exited}) before it was ready:\n${output.slice(-4000)}`)
    }
    try {
      const response = await fetch(`${baseUrl}/readyz`)
      await response.arrayBuffer()
      if (response.status === 200) break
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop()
      throw new Error(`token-store was not ready at ${baseUrl}/readyz within 30 s:\n${output.slice(-4000)}`)
    }
    await sleep(100)
  }

  return { baseUrl, fullKey, readOnlyKey, log: () => output, stop }
}
