package config

import (
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// lineOf finds the line a meaning error (validate) is about: validate's
// messages start with the table they are in (`listener "orders": `,
// `backend "b": server "db1:1521": `, `log: `), then the key; at says which
// [[listener]] or [[backend]] of the file it is (tables of one name are
// told apart by it). It is the line that sets the key in that table when
// there is one, else the table's header; 0 when the message names no table
// of the text.
func lineOf(text, msg string, at tablePos) int {
	lines := strings.Split(strings.TrimPrefix(text, "\ufeff"), "\n")
	kind, rest, ok := tableOf(msg)
	if !ok {
		return 0
	}
	var t [2]int
	switch tables := sections(lines, kind); {
	case at.kind == "" && slices.Contains(oneOfAKind(), kind) && len(tables) > 0:
		t = tables[0]
	case at.kind == "" && slices.Contains(oneOfAKind(), kind):
		// No [admin] header: the table is written at the top, inline
		// (admin = {listen = ""}) or dotted (admin.listen = ""), and
		// its messages had no line.
		return topLevelLine(lines, kind, rest)
	case at.kind == kind && at.index >= 0 && at.index < len(tables):
		t = tables[at.index]
	default:
		return 0
	}
	return keyLine(lines, t, kind, rest)
}

// leadingKey is the key a message (after its table) begins with:
// health.timeout in `health.timeout (2s) must be ...`.
func leadingKey(rest string) string {
	key := rest
	if i := strings.IndexFunc(key, func(r rune) bool { return !(r == '.' || r == '_' || 'a' <= r && r <= 'z') }); i >= 0 {
		key = key[:i]
	}
	return strings.TrimSuffix(key, ".")
}

// keyLine is the line in table t ([start, end) of lines) that sets the key
// rest begins with, or t's header line.
func keyLine(lines []string, t [2]int, kind, rest string) int {
	start, end := t[0], t[1]
	// A server of a backend: the line of its address.
	if addr, after, ok := quotedPrefix(rest, "server "); ok {
		// A server defined twice is the later one, spelled as in the
		// message (the first was named: a copied block with its address
		// left as it was pointed at the block it was copied from).
		twice := strings.HasPrefix(after, "defined twice")
		line := 0
		for i := start; i < end; i++ {
			if strings.Contains(lines[i], strconv.Quote(addr)) {
				line = i + 1
				if !twice {
					break
				}
			}
		}
		if line > 0 {
			return line
		}
		rest = after
	}
	// A server without an address, by its place among the backend's
	// [[backend.server]] tables: the line of the key in it, else its
	// header (one written inline has none: the backend's key then).
	if r, found := strings.CutPrefix(rest, "server #"); found {
		if n, after, ok := strings.Cut(r, ": "); ok {
			servers := sections(lines[start:end], kind+".server")
			if i, err := strconv.Atoi(n); err == nil && i >= 1 && i <= len(servers) {
				s := servers[i-1]
				return keyLine(lines, [2]int{start + s[0], start + s[1]}, kind+".server", after)
			}
			// Written inline (server = [{...}]): the line of the
			// backend's server key, not the key named after the
			// place (address is in no line of the backend's own).
			rest = "server"
		}
	}
	if key := leadingKey(rest); key != "" {
		path := toml.Key{kind}
		path = append(path, strings.Split(key, ".")...)
		// The key's line; for a key left at its default, the header of
		// the subtable it belongs in ([backend.health] for health.timeout)
		// when the file has one.
		table := strings.Join(lines[start:end], "\n")
		for n := len(path); n > 1; n-- {
			if l, _ := locateKey(table, path[:n]); l > 1 {
				return start + l
			}
		}
	}
	return start + 1
}

// topLevelLine is the line, before the file's first table header, that
// sets the key rest begins with in the table kind, written inline or
// dotted there; else the line that sets kind itself; 0 when none does.
func topLevelLine(lines []string, kind, rest string) int {
	end := len(lines)
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "[") {
			end = i
			break
		}
	}
	// "\n" first: locateKey falls back to line 1, which would be taken
	// for a key on the file's first line.
	top := "\n" + strings.Join(lines[:end], "\n")
	path := toml.Key{kind}
	if key := leadingKey(rest); key != "" {
		path = append(path, strings.Split(key, ".")...)
	}
	for n := len(path); n >= 1; n-- {
		if l, _ := locateKey(top, path[:n]); l > 1 {
			return l - 1
		}
	}
	return 0
}

// oneOfAKind names the tables a file has one of, named by a validate
// message as `log: ` (the others, listener and backend, by name).
func oneOfAKind() []string { return []string{"log", "admin", "shutdown", "reload"} }

// tableOf splits a validate message into the kind of its table and the
// rest after the table (`listener "orders": `, `log: `).
func tableOf(msg string) (kind, rest string, ok bool) {
	for _, k := range oneOfAKind() {
		if r, found := strings.CutPrefix(msg, k+": "); found {
			return k, r, true
		}
	}
	for _, k := range []string{"listener", "backend"} {
		if _, r, found := quotedPrefix(msg, k+" "); found {
			return k, r, true
		}
		// A table without a name: `listener #2: `.
		if r, found := strings.CutPrefix(msg, k+" #"); found {
			if _, r, found = strings.Cut(r, ": "); found {
				return k, r, true
			}
		}
	}
	return "", "", false
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

// sections returns the line ranges [start, end) of the tables of kind, in
// the file's order, subtables included.
func sections(lines []string, kind string) [][2]int {
	header := func(l string) (string, bool) {
		t := strings.NewReplacer(" ", "", "\t", "").Replace(strings.TrimSpace(l))
		if !strings.HasPrefix(t, "[") {
			return "", false
		}
		t = strings.Trim(t, "[]")
		if i := strings.IndexByte(t, ']'); i >= 0 {
			t = t[:i]
		}
		return t, true
	}
	var out [][2]int
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
		out = append(out, [2]int{i, j})
		i = j - 1
	}
	return out
}
