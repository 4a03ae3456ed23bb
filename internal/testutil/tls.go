package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TLSFiles are PEM files of a throw-away CA, a server certificate for
// 127.0.0.1 and a client certificate, all signed by the CA. IssueClient
// signs more client certificates with the same CA.
type TLSFiles struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string

	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	issued int
}

// NewTLSFiles writes a fresh CA and leaf certificates into dir.
func NewTLSFiles(t testing.TB, dir string) *TLSFiles {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "scopewatch test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTpl, caTpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	f := &TLSFiles{CA: filepath.Join(dir, "ca.pem"), ServerCert: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server.key"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client.key"), dir: dir, ca: ca, caKey: caKey}
	writePEM(t, f.CA, "CERTIFICATE", caDER)
	f.leaf(t, "127.0.0.1", x509.ExtKeyUsageServerAuth, f.ServerCert, f.ServerKey)
	f.leaf(t, "scopewatch-test-client", x509.ExtKeyUsageClientAuth, f.ClientCert, f.ClientKey)
	return f
}

// IssueClient signs a client certificate whose Common Name is cn (the MQTT
// username of a broker with use_identity_as_username) and writes it and
// its key next to the CA. Not safe for concurrent use.
func (f *TLSFiles) IssueClient(t testing.TB, cn string) (certFile, keyFile string) {
	t.Helper()
	f.issued++
	// The file name is not the CN, which may hold characters a path
	// should not.
	base := filepath.Join(f.dir, fmt.Sprintf("client-%d", f.issued))
	certFile, keyFile = base+".pem", base+".key"
	f.leaf(t, cn, x509.ExtKeyUsageClientAuth, certFile, keyFile)
	return certFile, keyFile
}

func (f *TLSFiles) leaf(t testing.TB, name string, usage x509.ExtKeyUsage, certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// Random serials: a CA must not reuse one, and a test may issue many.
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, f.ca, &key.PublicKey, f.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, certPath, "CERTIFICATE", der)
	writePEM(t, keyPath, "EC PRIVATE KEY", kder)
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// StartMosquittoTLS starts a broker whose only listener speaks TLS with the
// generated server certificate and requires a client certificate signed
// by the same CA. Use b.TLSURL() and the returned files.
func StartMosquittoTLS(t testing.TB, opts ...BrokerOption) (*Broker, *TLSFiles) {
	t.Helper()
	files := NewTLSFiles(t, t.TempDir())
	opts = append(opts, func(b *Broker) {
		b.extra += "cafile " + files.CA + "\ncertfile " + files.ServerCert + "\nkeyfile " + files.ServerKey + "\nrequire_certificate true\n"
	})
	return StartMosquitto(t, opts...), files
}

// TLSURL is the broker address with the ssl:// scheme.
func (b *Broker) TLSURL() string { return "ssl://" + b.Addr() }
