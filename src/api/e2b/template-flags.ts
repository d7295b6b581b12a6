/**
 * `shoal serve --template NAME=IMAGE` parsing, apart from the templates' runtime so the CLI's
 * start does not load the API to parse a flag.
 */

/**
 * `--template NAME=IMAGE` values: NAME a template alias (it becomes part of a snapshot tag),
 * IMAGE non-empty; `check(image)` validates the image reference (serve passes parseImage).
 */
export function parseTemplateFlags(values: readonly string[], check: (image: string) => void): Map<string, string> {
  const out = new Map<string, string>();
  for (const value of values) {
    const eq = value.indexOf('=');
    const name = eq > 0 ? value.slice(0, eq) : '';
    const image = eq > 0 ? value.slice(eq + 1) : '';
    if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,48}$/.test(name) || image === '') {
      throw new Error(`invalid --template "${value}": expected NAME=IMAGE, NAME of letters, digits, _ . - (at most 49)`);
    }
    if (out.has(name)) throw new Error(`--template ${name} is given twice`);
    check(image);
    out.set(name, image);
  }
  return out;
}
