"""boto3 through IMDSv1 only, for podiam's end-to-end test.

botocore asks for an IMDSv2 token first and uses v1 only when the token PUT
fails in certain ways. To exercise the agent's v1 path for real, this script
swaps the session's instance metadata provider for one whose fetcher never
asks for a token, so every metadata GET carries no X-aws-ec2-metadata-token
header. Everything else (credential resolution, refresh, STS signing) is
boto3's own. It prints the caller's ARN from STS GetCallerIdentity.
"""

import sys

import boto3
import botocore.session
from botocore.credentials import InstanceMetadataProvider
from botocore.utils import InstanceMetadataFetcher


class IMDSv1Fetcher(InstanceMetadataFetcher):
    def _fetch_metadata_token(self):
        self._assert_enabled()
        return None

    def _get_request(self, url_path, retry_func, token=None):
        if token is not None:
            raise AssertionError("IMDSv1 fetcher was handed a token")
        return super()._get_request(url_path, retry_func, token=None)


def main():
    core = botocore.session.get_session()
    resolver = core.get_component("credential_provider")
    # botocore's defaults: 1 s timeout, one attempt.
    fetcher = IMDSv1Fetcher(timeout=1, num_attempts=1, user_agent="podiam-e2e-imdsv1")
    replaced = False
    for i, provider in enumerate(resolver.providers):
        if provider.METHOD == "iam-role":
            resolver.providers[i] = InstanceMetadataProvider(iam_role_fetcher=fetcher)
            replaced = True
    if not replaced:
        print("imdsv1.py: no iam-role provider in botocore's chain", file=sys.stderr)
        return 2
    session = boto3.Session(botocore_session=core)
    creds = session.get_credentials()
    if creds is None:
        print("imdsv1.py: Unable to locate credentials", file=sys.stderr)
        return 1
    print(f"credential method: {creds.method}, access key id: {creds.access_key}", file=sys.stderr)
    arn = session.client("sts").get_caller_identity()["Arn"]
    print(arn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
