package service

import (
	"k8s.io/client-go/tools/cache"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
)

// IndexCredKey indexes live pods by the session key they would use, so the
// credential cache can ask "does any live pod still use this role?".
const IndexCredKey = "podiam-credkey"

// CredKeyIndexFunc indexes live pods with a valid role under their key.
// Pods still pending without an address count: they are about to ask.
func CredKeyIndexFunc(keys KeyResolver, defaultSession string) cache.IndexFunc {
	return func(obj any) ([]string, error) {
		pod := asPod(obj)
		if pod == nil || !podindex.Live(pod) {
			return nil, nil
		}
		key, err := keys.Key(pod.GetAnnotations(), defaultSession)
		if err != nil {
			return nil, nil
		}
		return []string{key.String()}, nil
	}
}

// InUse reports whether any live pod in the indexer uses key.
func InUse(pods cache.Indexer) func(creds.Key) bool {
	return func(key creds.Key) bool {
		objs, err := pods.ByIndex(IndexCredKey, key.String())
		return err == nil && len(objs) > 0
	}
}
