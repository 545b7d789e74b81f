/**
 * A local webhook endpoint for the service's grant events: `POST /ok` answers 204,
 * anything else 500 (so a delivery to `/broken` fails). It records what it received.
 */
import { createServer, type IncomingMessage, type Server } from "node:http"
import type { AddressInfo } from "node:net"

export interface ReceivedWebhook {
  readonly path: string
  /** The `webhook-id` header: the delivery's `eventId`. */
  readonly webhookId: string | undefined
  readonly body: string
}

export interface WebhookReceiver {
  readonly baseUrl: string
  readonly received: Array<ReceivedWebhook>
  close(): Promise<void>
}

const readBody = (req: IncomingMessage): Promise<string> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")))
    req.on("error", reject)
  })

export const startWebhookReceiver = async (): Promise<WebhookReceiver> => {
  const received: Array<ReceivedWebhook> = []
  const server: Server = createServer((req, res) => {
    readBody(req).then(
      (body) => {
        const id = req.headers["webhook-id"]
        received.push({ path: req.url ?? "", webhookId: typeof id === "string" ? id : undefined, body })
        res.writeHead(req.method === "POST" && req.url === "/ok" ? 204 : 500)
        res.end()
      },
      () => {
        res.writeHead(500)
        res.end()
      }
    )
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as AddressInfo
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}
