/**
 * `shoal serve`'s E2B flags: --template NAME=IMAGE (name usable in a snapshot tag, image checked
 * as `shoal run` checks it, no name twice) and --domain (a DNS name).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseDomain, parseTemplates } from '../../src/cli/commands/serve';

describe('serve --template and --domain', () => {
  it('parses NAME=IMAGE pairs and refuses bad ones', () => {
    assert.deepEqual([...parseTemplates(['base=docker.io/library/python:3.12-slim', 'b2=busybox'])], [['base', 'docker.io/library/python:3.12-slim'], ['b2', 'busybox']]);
    assert.deepEqual([...parseTemplates(undefined)], []);
    for (const bad of ['base', '=busybox', 'base=', '../x=busybox', `${'a'.repeat(50)}=busybox`, 'a b=busybox']) {
      assert.throws(() => parseTemplates([bad]), /invalid --template/, bad);
    }
    assert.throws(() => parseTemplates(['a=busybox', 'a=alpine']), /given twice/);
    assert.throws(() => parseTemplates(['a=docker-archive:/nonexistent/x.tar']), /image file not found/);
    assert.throws(() => parseTemplates(['a=NOT A REF']), /invalid image reference/);
  });

  it('parses a domain', () => {
    assert.equal(parseDomain(undefined), null);
    assert.equal(parseDomain('Sbx.Example.COM.'), 'sbx.example.com');
    for (const bad of ['', 'a..b', '-a.b', 'a_b.c', 'a b', `${'a'.repeat(64)}.com`]) assert.throws(() => parseDomain(bad), /invalid --domain/, bad);
  });
});
