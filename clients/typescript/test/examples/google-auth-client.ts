// The app's GoogleAuthClientLive rewritten over the client: the code shown in README.md
// (imported through the package's own name, so it also checks the "exports" map), and run
// against the real service by integration.test.ts.
import { Context, Effect, Layer } from "effect"
import {
  getValidToken,
  type GoogleAuthenticationError,
  type GoogleScopeExpansionRequiredError,
  type GoogleTokenExpiredError,
  type GoogleTokenRefreshError,
  isTokenStoreError,
  TokenStoreClient
} from "@token-store/client"

export interface GoogleAuthClientService {
  /** A Google access token for `scopes`, valid for at least 5 minutes. */
  readonly getValidToken: (
    userId: string,
    scopes: ReadonlyArray<string>
  ) => Effect.Effect<
    string,
    GoogleAuthenticationError | GoogleScopeExpansionRequiredError | GoogleTokenRefreshError | GoogleTokenExpiredError
  >
}

export class GoogleAuthClient extends Context.Tag("GoogleAuthClient")<GoogleAuthClient, GoogleAuthClientService>() {}

export const GoogleAuthClientLive = Layer.effect(
  GoogleAuthClient,
  Effect.gen(function*() {
    const tokenStore = yield* TokenStoreClient
    return GoogleAuthClient.of({
      getValidToken: (userId, scopes) =>
        getValidToken(userId, "google", scopes).pipe(
          Effect.map((token) => token.accessToken),
          // What is left is the service's or the deployment's trouble (KMS or database
          // down, a wrong API key, the network), not the user's: the app's interface has no
          // channel for it, so it is a defect here. Keep it typed instead to answer 503.
          Effect.catchIf(isTokenStoreError, (e) => Effect.die(e)),
          Effect.provideService(TokenStoreClient, tokenStore)
        )
    })
  })
)
