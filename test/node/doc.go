// Package node proves podiam the way users install it: the image built
// from the Dockerfile (make image), the Helm chart and the plain manifests,
// on a real single-node cluster made of etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd, runc, the CNI bridge
// plugin and a kubelet, with moto as STS and a canary metadata service on
// 169.254.169.254 that must never answer a pod.
//
// The node is a network namespace: containerd, the kubelet and the control
// plane join it with nsenter --net only, so hostNetwork pods and every
// iptables rule the kubelet, the CNI plugin and the agent write stay in it,
// while mounts, cgroups and files are the host's and are put back by the
// test. It needs root and fails without it.
package node
