// Command gosdk is the aws-sdk-go-v2 client that podiam's end-to-end test
// runs inside a pod network namespace. It uses the SDK's default
// configuration chain exactly as an application would, so with no
// credentials in its environment it must find them through the EC2 instance
// metadata provider at 169.254.169.254, which the agent's DNAT rule
// intercepts. It prints the caller's ARN from STS GetCallerIdentity on
// stdout and the credential source on stderr.
//
// This program may link the AWS SDK; the agent must not.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gosdk:", err)
		os.Exit(1)
	}
}

func run() error {
	// Bounded so a wedged IMDS fails the test instead of hanging it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return fmt.Errorf("load config: %w", err)
	}
	c, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		return fmt.Errorf("retrieve credentials: %w", err)
	}
	fmt.Fprintf(os.Stderr, "credential source: %s, access key id: %s, expires: %s\n",
		c.Source, c.AccessKeyID, c.Expires.UTC().Format(time.RFC3339))
	out, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return fmt.Errorf("get caller identity: %w", err)
	}
	fmt.Println(aws.ToString(out.Arn))
	return nil
}
