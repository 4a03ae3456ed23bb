package inference

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestCanonicalManifest(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{
			name: "keys sorted at every level, whitespace dropped, signature removed",
			in: `{ "b": 1, "a": {"z": [3, {"y": true, "x": null}], "m": "s"},
			       "signature": "abc", "signer": "k" }`,
			want: `{"a":{"m":"s","z":[3,{"x":null,"y":true}]},"b":1,"signer":"k"}`,
		},
		{
			name: "numbers verbatim",
			in:   `{"threshold": 0.50, "scale": 3.9215686274509803e-3, "n": -0}`,
			want: `{"n":-0,"scale":3.9215686274509803e-3,"threshold":0.50}`,
		},
		{
			name: "strings escaped minimally",
			in:   `{"s": "a<b>&c \u00e9 \"q\" \\ \n\t\u0001\u2028", "\u00e9": 1, "z": 2}`,
			want: `{"s":"a<b>&c é \"q\" \\ \n\t\u0001\u2028","z":2,"é":1}`,
		},
		{
			name: "only the top-level signature is removed",
			in:   `{"input": {"signature": 1}}`,
			want: `{"input":{"signature":1}}`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CanonicalManifest([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
	for _, bad := range []string{`{"a":1,"a":2}`, `[1]`, `{`, `null`} {
		if _, err := CanonicalManifest([]byte(bad)); !errors.Is(err, ErrManifest) {
			t.Errorf("CanonicalManifest(%s) = %v, want ErrManifest", bad, err)
		}
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	pub, priv := testKey(1)
	pub2, _ := testKey(2)
	m := testManifest()
	m.Files = map[string]string{BackboneFile: strings.Repeat("0", 64), HeadFile: strings.Repeat("1", 64), "baseline.json": strings.Repeat("2", 64)}
	if err := Sign(m, priv); err != nil {
		t.Fatal(err)
	}
	if m.Signer != FormatPublicKey(pub) {
		t.Errorf("signer = %s, want %s", m.Signer, FormatPublicKey(pub))
	}
	raw, err := MarshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseManifest(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(parsed, m) {
		t.Errorf("manifest did not round-trip:\n%+v\n%+v", parsed, m)
	}
	signer, err := VerifyManifestSignature(raw, parsed, []ed25519.PublicKey{pub2, pub})
	if err != nil || !bytes.Equal(signer, pub) {
		t.Fatalf("verify: %x, %v", signer, err)
	}
	if _, err := VerifyManifestSignature(raw, parsed, []ed25519.PublicKey{pub2}); !errors.Is(err, ErrUntrusted) {
		t.Errorf("verify with only another key: %v, want ErrUntrusted", err)
	}
	// Signing is deterministic (ed25519 needs no randomness).
	again := *m
	if err := Sign(&again, priv); err != nil || again.Signature != m.Signature {
		t.Errorf("second signature differs: %v", err)
	}
	if err := Sign(m, priv[:10]); !errors.Is(err, ErrKey) {
		t.Errorf("short private key: %v, want ErrKey", err)
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	pub, priv, err := GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Join(dir, "site")
	if err := WriteKeyPair(prefix, "", pub, priv); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(prefix + ".key")
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	gotPriv, err := LoadPrivateKey(prefix + ".key")
	if err != nil || !bytes.Equal(gotPriv, priv) {
		t.Fatalf("LoadPrivateKey: %v", err)
	}
	keys, err := LoadPublicKeys(prefix + ".pub")
	if err != nil || len(keys) != 1 || !bytes.Equal(keys[0], pub) {
		t.Fatalf("LoadPublicKeys: %v %v", keys, err)
	}
	if err := WriteKeyPair(prefix, "", pub, priv); err == nil {
		t.Error("WriteKeyPair overwrote an existing private key")
	}

	// A directory is read as all its *.pub files, in name order.
	pub2, _ := testKey(2)
	writeFile(t, filepath.Join(dir, "a.pub"), []byte("# fleet key\n\n  "+FormatPublicKey(pub2)+"  fleet-2026\n"))
	writeFile(t, filepath.Join(dir, "notes.txt"), []byte("not a key"))
	keys, err = LoadPublicKeys(dir)
	if err != nil || len(keys) != 2 || !bytes.Equal(keys[0], pub2) || !bytes.Equal(keys[1], pub) {
		t.Fatalf("LoadPublicKeys(dir) = %v, %v", keys, err)
	}

	// Group-readable private keys are refused.
	os.Chmod(prefix+".key", 0o640)
	if _, err := LoadPrivateKey(prefix + ".key"); !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable key: %v", err)
	}
}

func TestKeyFileErrors(t *testing.T) {
	dir := t.TempDir()
	short := base64.StdEncoding.EncodeToString([]byte("too short"))
	cases := map[string]string{
		"bad base64": "# key\nnot*base64\n",
		"wrong size": short + "\n",
		"empty":      "# nothing here\n",
	}
	for name, body := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".pub")
		writeFile(t, p, []byte(body))
		_, err := LoadPublicKeys(p)
		if !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, want ErrKey naming the file", name, err)
		}
		if name != "empty" && !strings.Contains(err.Error(), "line") {
			t.Errorf("%s: %v does not name the line", name, err)
		}
	}
	if _, err := LoadPublicKeys(t.TempDir()); !errors.Is(err, ErrKey) {
		t.Errorf("empty key folder: %v, want ErrKey", err)
	}
	// A private key whose public half was replaced is refused.
	_, priv := testKey(1)
	pub2, _ := testKey(2)
	forged := append(append([]byte{}, priv[:32]...), pub2...)
	p := filepath.Join(dir, "forged.key")
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(forged)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPrivateKey(p); !errors.Is(err, ErrKey) {
		t.Errorf("inconsistent private key: %v, want ErrKey", err)
	}
}

func TestDefaultKeysPath(t *testing.T) {
	if _, err := os.Stat("/etc/scopewatch/keys"); err == nil {
		t.Skip("/etc/scopewatch/keys exists on this machine and takes precedence")
	}
	root := t.TempDir()
	deep := filepath.Join(root, "a", "b")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(deep)
	if got := DefaultKeysPath(); got != "" {
		t.Errorf("outside a source tree: %q, want \"\"", got)
	}
	if err := os.MkdirAll(filepath.Join(root, "models", "keys"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "go.mod"), []byte("module example.com/other\n"))
	if got := DefaultKeysPath(); got != "" {
		t.Errorf("in another module's tree: %q, want empty", got)
	}
	writeFile(t, filepath.Join(root, "go.mod"), []byte("module github.com/scopewatch/scopewatch\n"))
	if got, want := DefaultKeysPath(), filepath.Join(root, "models", "keys"); got != want {
		t.Errorf("DefaultKeysPath() = %q, want %q", got, want)
	}
}
