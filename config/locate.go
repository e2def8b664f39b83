package config

import (
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// lineOf finds the line a meaning error (validate) is about: validate's
// messages start with the table they are in (`listener "orders": `,
// `backend "b": server "db1:1521": `, `log: `), then the key. It is the
// line that sets the key in that table when there is one, else the table's
// header; 0 when the message names no table of the text (a default the
// file never wrote, or no table at all). nth says which of the tables of
// that name is meant (0: the first; a name defined twice is reported at
// its second).
func lineOf(text, msg string, nth int) int {
	lines := strings.Split(text, "\n")
	kind, name, rest, ok := tableOf(msg)
	if !ok {
		return 0
	}
	start, end := section(lines, kind, name, nth)
	if start < 0 {
		return 0
	}
	// A server of a backend: the line of its address.
	if addr, after, ok := quotedPrefix(rest, "server "); ok {
		for i := start; i < end; i++ {
			if strings.Contains(lines[i], strconv.Quote(addr)) {
				return i + 1
			}
		}
		rest = after
	}
	key := rest
	if i := strings.IndexFunc(key, func(r rune) bool { return !(r == '.' || r == '_' || 'a' <= r && r <= 'z') }); i >= 0 {
		key = key[:i]
	}
	key = strings.TrimSuffix(key, ".")
	if key != "" {
		path := toml.Key{kind}
		path = append(path, strings.Split(key, ".")...)
		if l, _ := locateKey(strings.Join(lines[start:end], "\n"), path); l > 1 {
			return start + l
		}
	}
	return start + 1
}

// tableOf splits a validate message into its table (kind and name, "" for
// [log] and [admin]) and the rest.
func tableOf(msg string) (kind, name, rest string, ok bool) {
	for _, k := range []string{"log", "admin"} {
		if r, found := strings.CutPrefix(msg, k+": "); found {
			return k, "", r, true
		}
	}
	for _, k := range []string{"listener", "backend"} {
		if n, r, found := quotedPrefix(msg, k+" "); found {
			return k, n, r, true
		}
	}
	return "", "", "", false
}

// quotedPrefix reads `PREFIX"NAME": ` at the start of s.
func quotedPrefix(s, prefix string) (name, rest string, ok bool) {
	r, found := strings.CutPrefix(s, prefix)
	if !found || !strings.HasPrefix(r, `"`) {
		return "", "", false
	}
	q, err := strconv.QuotedPrefix(r)
	if err != nil {
		return "", "", false
	}
	name, _ = strconv.Unquote(q)
	rest, found = strings.CutPrefix(r[len(q):], ": ")
	return name, rest, found
}

// section returns the lines [start, end) of the nth table of kind named
// name ([log] or [admin] when name is ""), its subtables included.
func section(lines []string, kind, name string, nth int) (start, end int) {
	header := func(l string) (string, bool) {
		t := strings.ReplaceAll(strings.TrimSpace(l), " ", "")
		if !strings.HasPrefix(t, "[") {
			return "", false
		}
		t = strings.Trim(t, "[]")
		if i := strings.IndexByte(t, ']'); i >= 0 {
			t = t[:i]
		}
		return t, true
	}
	start = -1
	for i := 0; i < len(lines); i++ {
		h, ok := header(lines[i])
		if !ok || h != kind {
			continue
		}
		j := i + 1
		for ; j < len(lines); j++ {
			if h, ok := header(lines[j]); ok && !strings.HasPrefix(h, kind+".") {
				break
			}
		}
		if name == "" || tableName(lines[i:j]) == name {
			if nth == 0 {
				return i, j
			}
			nth--
		}
		i = j - 1
	}
	return -1, -1
}

// tableName is the name = "..." set in a table's own lines (before any
// subtable).
func tableName(lines []string) string {
	for _, l := range lines[1:] {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "[") {
			break
		}
		k, v, ok := strings.Cut(t, "=")
		if ok && strings.TrimSpace(k) == "name" {
			v = strings.TrimSpace(strings.SplitN(strings.TrimSpace(v), "#", 2)[0])
			if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' { // a literal string
				return v[1 : len(v)-1]
			}
			if s, err := strconv.Unquote(v); err == nil {
				return s
			}
		}
	}
	return ""
}
