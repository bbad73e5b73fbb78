// Command podiam serves AWS IAM credentials to Kubernetes pods.
package main

func main() {}
